"""A smoke evaluation run, made once for the scripts that read a run's saved attacks."""

from __future__ import annotations

import dataclasses

import pytest

from smoothguard.evaluation.config import SMOKE, EvalConfig
from smoothguard.evaluation.run import evaluate


@pytest.fixture(scope="session")
def smoke_eval(tmp_path_factory: pytest.TempPathFactory) -> EvalConfig:
    out = tmp_path_factory.mktemp("smoke-eval")
    config = dataclasses.replace(EvalConfig(out=out, **SMOKE), sweeps=False)
    evaluate(config, log=lambda _: None)
    return config
