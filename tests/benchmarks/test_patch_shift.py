"""The first-layer diagnostic: an attack's patch-embedding shift against the noise's spread."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from smoothguard.evaluation.config import EvalConfig


@pytest.fixture
def script(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_script("patch_shift")


def test_ratio_is_shift_over_noise_deviation(script: ModuleType) -> None:
    conv = torch.nn.Conv2d(2, 1, kernel_size=2, stride=2, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 2.0]]]]))
        conv.bias.fill_(5.0)  # cancels: only the difference reaches the ratio
    # noise 0.1 on channel 0, 0.2 on channel 1: sqrt(4 * 0.01 + 4 * 0.04) = sqrt(0.2)
    std = script.noise_std(conv.weight.detach(), (0.1, 0.2))
    assert std.item() == pytest.approx(0.2**0.5)
    clean = torch.zeros(1, 2, 4, 4)
    adversarial = clean.clone()
    adversarial[0, 0, :2, :2] = 0.1  # one patch, channel 0: shift 4 * 0.1
    ratio = script.shift_ratios(conv, clean, adversarial, std)
    assert ratio.shape == (1, 1, 2, 2)
    assert ratio[0, 0, 0, 0].item() == pytest.approx(0.4 / 0.2**0.5)
    assert ratio.flatten()[1:].abs().max().item() == 0.0


@pytest.mark.parametrize("bad", ["decibel:0.1", "pixel:", "pixel:0", "pixel:-1"])
def test_bad_noise_settings_are_usage_errors(script: ModuleType, bad: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        script.main(["--eval", str(tmp_path), "--noise", bad, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and not (tmp_path / "out").exists()


def test_a_folder_without_an_evaluation_is_a_usage_error(
    script: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        script.main(["--eval", str(tmp_path), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and "holds no evaluation" in capsys.readouterr().err


@pytest.mark.slow
def test_measures_the_saved_attacks_of_an_eval_run(
    script: ModuleType, smoke_eval: EvalConfig, tmp_path: Path
) -> None:
    argv = ["--eval", str(smoke_eval.out), "--out", str(tmp_path / "out")]
    assert script.main([*argv, "--noise", "normalized:0.15", "--noise", "pixel:0.15"]) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    # the non-EOT attacks of the smoke plan, each under both settings
    assert sorted({r["attack"] for r in rows}) == ["pgd-16", "targeted-32", "universal-32"]
    by = {(r["attack"], r["noise"]): r for r in rows}
    for attack in ("pgd-16", "targeted-32", "universal-32"):
        normalized, pixel = by[attack, "normalized 0.15"], by[attack, "pixel 0.15"]
        assert normalized["largest_ratio_median"] > 0
        # the same sigma in pixels is 1/std (~3.7x for CLIP statistics) more noise
        ratio = normalized["largest_ratio_median"] / pixel["largest_ratio_median"]
        assert 3.4 < ratio < 3.9
        assert pixel["share_over_2"] <= normalized["share_over_2"]
