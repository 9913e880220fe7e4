"""CI smoke run of the audio evaluation: every metric present, and the attack really works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoothguard.evaluation.audio import METRICS, SMOKE, AudioEvalConfig, evaluate, main

pytestmark = pytest.mark.slow


def test_audio_smoke_evaluation_produces_every_metric(tmp_path: Path) -> None:
    config = AudioEvalConfig(out=tmp_path, **SMOKE)
    evaluate(config, log=lambda _: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    for mode in ("undefended", "defended"):
        for key in METRICS:
            assert saved["utility"][mode][key] == saved["utility"][mode][key]  # not NaN
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
