"""The builders (default models and the denoiser) reject bad values before any work starts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "build"))

import train_alm
import train_denoiser
import train_vlm


@pytest.mark.parametrize(
    ("main", "option"),
    [
        (train_vlm.main, "--turns"),
        (train_vlm.main, "--batch-size"),
        (train_vlm.main, "--steps"),
        (train_alm.main, "--batch-size"),
        (train_alm.main, "--threads"),
        (train_alm.main, "--clips"),
        (train_denoiser.main, "--steps"),
        (train_denoiser.main, "--eval-items"),
    ],
)
def test_counts_below_one_are_usage_errors(
    main: object, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([option, "0"])  # type: ignore[operator]
    assert stopped.value.code == 2
    assert "must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (train_vlm.main, ["--noise-share", "1.5"], "must be between 0 and 1, got 1.5"),
        (train_alm.main, ["--noise-share", "-0.1"], "must be between 0 and 1, got -0.1"),
        (train_vlm.main, ["--pretrain-noise-share", "2"], "must be between 0 and 1, got 2.0"),
        (train_vlm.main, ["--noise-max", "0"], "must be above 0, got 0.0"),
        (train_vlm.main, ["--minutes", "nan"], "must be above 0, got nan"),
        (train_alm.main, ["--near-miss-pairs", "-1"], "must be at least 0, got -1"),
        (train_denoiser.main, ["--model-aware-from", "1.2"], "must be between 0 and 1, got 1.2"),
        (train_denoiser.main, ["--feature-weight", "nan"], "must be at least 0, got nan"),
        (train_denoiser.main, ["--stability-weight", "-1"], "must be at least 0, got -1.0"),
        (train_denoiser.main, ["--max-minutes", "nan"], "must be above 0, got nan"),
        (train_denoiser.main, ["--max-minutes", "1.5"], "must exceed the 2.0 min kept"),
    ],
)
def test_shares_and_scales_out_of_range_are_usage_errors(
    main: object, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)  # type: ignore[operator]
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("main", "argv", "expected"),
    [
        (
            train_vlm.main,
            ["--turns", "3", "--pretrain-noise-share", "0.7", "--noise-share", "0.4"],
            {"turns": 3, "pretrain_noise_share": 0.7, "noise_share": 0.4},
        ),
        (
            train_alm.main,
            ["--clips", "40", "--near-miss-pairs", "0", "--steps", "7"],
            {"clips": 40, "near_miss_pairs": 0, "steps": 7},
        ),
    ],
)
def test_each_option_reaches_the_recipe(
    main: object, argv: list[str], expected: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped: list[object] = []
    monkeypatch.setattr(train_vlm, "ship", lambda out, config, *rest: shipped.append(config))
    assert main([*argv, "--no-eval"]) == 0  # type: ignore[operator]
    (config,) = shipped
    assert {name: getattr(config, name) for name in expected} == expected
