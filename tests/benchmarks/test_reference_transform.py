"""The reference code's image round trip, and the script that measures it on an eval run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from smoothguard.evaluation.run import SMOKE, EvalConfig, evaluate


@pytest.fixture
def script(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_script("reference_transform")


def test_round_trip_thresholds_the_normalised_values(script: ModuleType) -> None:
    # normalised values: below 0 (darker than the channel mean) -> black, above 1 -> white
    values = np.array([-1.7, -0.01, 0.0, 0.5, 0.999, 1.0, 2.1], np.float32)
    pixels = np.broadcast_to(values, (1, 3, 1, 7))
    out = script.reference_round_trip(pixels)
    assert out.shape == (1, 1, 7, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 0, 127, 254, 255, 255]


@pytest.mark.slow
def test_measures_every_saved_attack_of_an_eval_run(script: ModuleType, tmp_path: Path) -> None:
    smoke = dataclasses.replace(EvalConfig(out=tmp_path / "eval", **SMOKE), sweeps=False)
    evaluate(smoke, log=lambda _: None)
    assert script.main(["--eval", str(smoke.out), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(result["rows"]) == ["as served", "round trip, sigma 0", "round trip, sigma 0.15"]
    # the EOT attacks aim at the defense's noise and are left out
    expected = {"pope_accuracy", "asr_pgd-16", "asr_targeted-32", "asr_universal-32"}
    for row in result["rows"].values():
        assert set(row) == expected and all(0.0 <= v <= 1.0 for v in row.values())
    # straight through, the saved PGD images fool the model as they did in the evaluation
    saved = json.loads((smoke.out / "results.json").read_text())["attacks"]
    assert result["rows"]["as served"]["asr_pgd-16"] == saved["pgd-16"]["asr_undefended"]
    assert (tmp_path / "out" / "results.md").read_text().startswith("| one copy, no vote |")
