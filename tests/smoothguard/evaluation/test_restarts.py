"""Restarts retry only the inputs the first run left unbroken, and keep a retry that breaks one."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.evaluation.attack_runs import AttackRun, compute_attack
from smoothguard.evaluation.attacks import AttackSpec
from smoothguard.evaluation.config import EvalConfig
from smoothguard.synthetic.synthpope import HARMFUL_MARKER, load_benchmark

MODEL = Path(__file__).resolve().parents[3] / "models" / "synthvlm"


@pytest.fixture(scope="module")
def model() -> VisionLanguageModel:
    return VisionLanguageModel.load(MODEL)


def test_restarts_retry_the_unbroken_inputs_only(
    model: VisionLanguageModel, tmp_path: Path
) -> None:
    items = load_benchmark("test", 4, 1, 1)["pope"][:4]
    config = EvalConfig(out=tmp_path, model_path=MODEL, batch_size=2)
    run = AttackRun("pgd-8", "pope", AttackSpec(8 / 255, 2), "flip", restarts=2)
    calls: list[list[int]] = []

    def broken(images: np.ndarray, asked: Sequence[Any]) -> np.ndarray:
        # first run: only item 0 is broken; the first restart breaks item 2; never item 1 or 3
        index = [next(k for k, item in enumerate(items) if item is it) for it in asked]
        calls.append(index)
        return np.array([k == (0 if len(calls) == 1 else 2) for k in index])

    compute_attack(model, run, items, config, HARMFUL_MARKER, broken)
    assert calls == [[0, 1, 2, 3], [1, 2, 3], [1, 3]]
    manifest = json.loads((tmp_path / "attacks" / "pgd-8" / "manifest.json").read_text())
    assert manifest["restarts"] == [
        {"restart": 1, "step_scale": 0.5, "tried": 3, "broken": 1},
        {"restart": 2, "step_scale": 0.25, "tried": 2, "broken": 0},
    ]
    # item 2 holds the first restart's image (another random start), the others the first run's
    first = dataclasses.replace(run, restarts=0)
    compute_attack(model, first, items, dataclasses.replace(config, out=tmp_path / "once"), "")
    same = [bool(np.array_equal(a, b)) for a, b in zip(run.images, first.images, strict=True)]
    assert same == [True, True, False, True]


def test_restarts_need_a_way_to_tell_broken_inputs(
    model: VisionLanguageModel, tmp_path: Path
) -> None:
    items = load_benchmark("test", 2, 1, 1)["pope"][:2]
    run = AttackRun("pgd-8", "pope", AttackSpec(8 / 255, 1), "flip", restarts=1)
    with pytest.raises(ValueError, match="restarts need"):
        compute_attack(model, run, items, EvalConfig(out=tmp_path), HARMFUL_MARKER)
