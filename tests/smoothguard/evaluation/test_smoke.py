"""CI smoke run of the evaluation: every metric present, and the attack really works."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from smoothguard.evaluation.config import SMOKE, EvalConfig
from smoothguard.evaluation.run import evaluate

pytestmark = pytest.mark.slow


def assert_metric(value: object, low: float, high: float = math.inf) -> None:
    """A real number in [low, high]: not NaN (an empty split), not inf, not None or missing."""
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    assert math.isfinite(value) and low <= value <= high, value


# Each utility metric's range: shares and F1 in [0, 1], at least one model call per request.
RANGES = {
    "pope_accuracy": (0.0, 1.0),
    "describe_f1": (0.0, 1.0),
    "safety_harmful_rate": (0.0, 1.0),
    "model_calls_per_request": (1.0, math.inf),
}


def test_smoke_evaluation_produces_every_metric(tmp_path: Path) -> None:
    config = EvalConfig(out=tmp_path, **SMOKE)
    results = evaluate(config, log=lambda _: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["attacks"].keys() == results["attacks"].keys()
    for mode in ("undefended", "defended", "adaptive"):
        assert saved["utility"][mode].keys() >= RANGES.keys(), mode
        for key, (low, high) in RANGES.items():
            assert_metric(saved["utility"][mode][key], low, high)
    assert saved["utility"]["undefended"]["model_calls_per_request"] == 1
    assert saved["utility"]["defended"]["model_calls_per_request"] == config.num_samples
    assert 1 < saved["utility"]["adaptive"]["model_calls_per_request"] <= config.num_samples
    expected = {"pgd-16", "targeted-32", "universal-32", "eot-pgd-16", "eot-targeted-32"}
    assert set(saved["attacks"]) == expected
    for row in saved["attacks"].values():
        assert {
            "asr_undefended",
            "asr_defended",
            "asr_adaptive",
            "outvoted_rate",
            "calls_adaptive",
        } <= row.keys()
    # the attack must really lower the undefended model's accuracy on its items
    assert saved["attacks"]["pgd-16"]["asr_undefended"] > 0
    assert {"sigma", "n"} == set(saved["sweeps"])
    assert (tmp_path / "results.md").exists()
    assert (tmp_path / "sweep_sigma.png").stat().st_size > 1000
    assert (tmp_path / "attacks" / "pgd-16" / "manifest.json").exists()
    # attacks are saved and replayed, not recomputed
    again = evaluate(dataclasses.replace(config, sweeps=False), log=lambda _: None)
    assert (
        again["attacks"]["pgd-16"]["attack_seconds"]
        == results["attacks"]["pgd-16"]["attack_seconds"]
    )
