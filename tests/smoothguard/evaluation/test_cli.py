"""The evaluation commands refuse a budget that would run nothing or run wrong, as usage errors,
before loading any model."""

from __future__ import annotations

import pytest

from smoothguard.evaluation import audio
from smoothguard.evaluation import run as image
from smoothguard.evaluation.config import EvalConfig, public_config


@pytest.mark.parametrize("main", [image.main, audio.main], ids=["image", "audio"])
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "-3"], "--steps must be at least 1, got -3"),
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--n-pope", "0"], "--n-pope must be at least 1"),
        (["--eot-samples", "-1"], "--eot-samples must be at least 0"),
        (["--sigma", "-1"], "--sigma must be in [0, 1.0], got -1.0"),
        (["--sigma", "nan"], "--sigma must be in [0, 1.0], got nan"),
        (["--num-samples", "65"], "--num-samples must be at most 64"),
    ],
)
def test_bad_budget_is_a_usage_error(
    main, argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was started


def test_restarts_may_not_be_negative(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    with pytest.raises(SystemExit):
        image.main(["--restarts", "-1", "--out", str(tmp_path)])
    assert "--restarts must be at least 0" in capsys.readouterr().err


def test_an_unknown_noise_unit_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    with pytest.raises(SystemExit) as stop:
        image.main(["--noise-unit", "decibel", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "--noise-unit" in capsys.readouterr().err and not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="--noise-unit must be one of"):
        EvalConfig(out=tmp_path, noise_unit="decibel")


@pytest.mark.parametrize("main", [image.main, audio.main], ids=["image", "audio"])
@pytest.mark.parametrize(
    "argv", [["--header", "x-key=1"], ["--root-certificates", "ca.pem"]], ids=["header", "ca"]
)
def test_connection_options_need_served(
    main, argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "apply to --served only" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_header_values_are_not_saved(tmp_path) -> None:
    config = EvalConfig(out=tmp_path, served="127.0.0.1:1", headers=(("x-key", "secret"),))
    saved = public_config(config)
    assert saved["headers"] == ["x-key"] and "secret" not in str(saved)
