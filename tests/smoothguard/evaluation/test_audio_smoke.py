"""CI smoke run of the audio evaluation: every metric present, and the attack really works."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from smoothguard.evaluation.audio import METRICS, SMOKE, AudioEvalConfig, evaluate, main

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


def test_audio_smoke_evaluation_produces_every_metric(tmp_path: Path) -> None:
    config = AudioEvalConfig(out=tmp_path, **SMOKE)
    evaluate(config, log=lambda _: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(METRICS) == set(RANGES)
    for mode in ("undefended", "defended"):
        for key, (low, high) in RANGES.items():
            assert_metric(saved["utility"][mode][key], low, high)
    assert saved["utility"]["undefended"]["model_calls_per_request"] == 1
    assert saved["utility"]["defended"]["model_calls_per_request"] == config.num_samples
    assert set(saved["attacks"]) == {
        "pgd-0.02",
        "targeted-0.02",
        "eot-pgd-0.02",
        "eot-targeted-0.02",
    }
    for row in saved["attacks"].values():
        assert {"asr_undefended", "asr_defended", "outvoted_rate", "eps_dbfs"} <= row.keys()
        assert row["max_abs_delta"] <= row["eps"] + 1e-6
    # the attack must really lower the undefended model's accuracy on its items
    pgd_row = saved["attacks"]["pgd-0.02"]
    assert pgd_row["asr_undefended"] > 0
    assert pgd_row["accuracy_undefended"] < saved["utility"]["undefended"]["pope_accuracy"]
    sweep = saved["sweeps"]["sigma"]
    assert [r["sigma"] for r in sweep] == list(SMOKE["sweep_sigmas"])
    assert {"pope_accuracy", "describe_f1", "asr_pgd-0.02"} <= sweep[0].keys()
    assert (tmp_path / "results.md").exists()
    assert (tmp_path / "sweep_sigma.png").stat().st_size > 1000


def test_command_line_smoke(tmp_path: Path) -> None:
    assert main(["--smoke", "--no-sweeps", "--out", str(tmp_path)]) == 0
    assert "pgd-0.02" in (tmp_path / "results.md").read_text()
