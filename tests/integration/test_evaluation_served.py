"""The evaluation's `--served` path: attacks computed here, answers from the real endpoints
(smoothguard / mllm for images, smoothguard_audio / mllm_audio for audio) over gRPC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smoothguard.evaluation import audio, run
from smoothguard.evaluation.answering import ServedMismatch, served_answerer
from smoothguard.evaluation.config import SMOKE

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_served_image_evaluation(triton: Any, tmp_path: Path) -> None:
    argv = ["--smoke", "--no-sweeps", "--served", triton.grpc_url, "--out", str(tmp_path)]
    assert run.main(argv) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["path"] == f"served {triton.grpc_url}"
    defended = saved["utility"]["defended"]
    assert defended["model_calls_per_request"] == SMOKE["num_samples"]
    assert defended["pope_accuracy"] >= 0.75
    assert all("asr_defended" in row for row in saved["attacks"].values())


def test_a_served_defense_in_another_noise_unit_is_refused(
    triton: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the test server adds noise in normalized units (the default); sigma 0.15 in pixels is
    # another defense, and the EOT attacks would aim at the wrong noise
    argv = ["--smoke", "--served", triton.grpc_url, "--noise-unit", "pixel"]
    with pytest.raises(SystemExit) as stop:
        run.main([*argv, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "--noise-unit normalized" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_audio_noise_in_another_unit_is_refused(triton: Any, tmp_path: Path) -> None:
    # the server adds audio noise relative to each clip's RMS (defense.audio_noise_unit)
    config = audio.AudioEvalConfig(out=tmp_path, served=triton.grpc_url)
    with pytest.raises(ServedMismatch, match="audio noise in relative units"):
        served_answerer(config, modality="audio", unit="absolute")
    assert served_answerer(config, modality="audio", unit="relative").seeded


def test_served_audio_evaluation(triton: Any, tmp_path: Path) -> None:
    argv = ["--smoke", "--no-sweeps", "--served", triton.grpc_url, "--out", str(tmp_path)]
    assert audio.main(argv) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["path"] == f"served {triton.grpc_url}"
    for mode in ("undefended", "defended"):
        assert saved["utility"][mode]["pope_accuracy"] >= 0.75, saved["utility"]
    assert saved["utility"]["defended"]["model_calls_per_request"] == audio.SMOKE["num_samples"]
    pgd = saved["attacks"]["pgd-0.02"]
    assert pgd["accuracy_undefended"] < saved["utility"]["undefended"]["pope_accuracy"]
