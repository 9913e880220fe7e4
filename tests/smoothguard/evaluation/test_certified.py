"""The certified evaluation's smoke run: its files, a monotone accuracy curve, radii that follow
from the recorded counts, a finite soundness section, and the same numbers for the same seed."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from smoothguard.core.certify import certify
from smoothguard.evaluation.certified import (
    RADII,
    SMOKE,
    certified_accuracy,
    flip_bounds,
    main,
    soundness,
)

pytestmark = pytest.mark.slow


def run(out: Path, *extra: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    assert main(["--smoke", "--threads", "1", "--out", str(out), *extra]) == 0
    return dict(json.loads((out / "results.json").read_text()))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("certified")
    return out, run(out)


def texts(counts: dict[str, int], total: int) -> list[str]:
    """Answers with these class counts; the rest outside the answer set."""
    words = [w for w, k in counts.items() for _ in range(k)]
    return words + ["something else"] * (total - len(words))


def test_writes_the_files(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, results = smoke
    assert (out / "results.md").read_text().startswith("# Certified accuracy")
    assert (out / "certified_accuracy_vs_radius.png").stat().st_size > 1000
    assert results["items"] == SMOKE["items"] == len(results["rows"])
    assert list(results["certified_accuracy"]) == [str(r) for r in RADII]


def test_certified_accuracy_does_not_grow_with_the_radius(
    smoke: tuple[Path, dict[str, Any]],
) -> None:
    _, results = smoke
    stated = [results["certified_accuracy"][str(r)] for r in RADII]
    assert all(0.0 <= a <= 1.0 for a in stated)
    assert all(a >= b for a, b in itertools.pairwise(stated))
    curve = [certified_accuracy(results["rows"], r) for r in np.linspace(0, 2, 101)]
    assert all(a >= b for a, b in itertools.pairwise(curve))
    assert stated[0] == results["certified_correct"] / results["items"]


def test_every_radius_is_certifys_for_the_recorded_counts(
    smoke: tuple[Path, dict[str, Any]],
) -> None:
    _, results = smoke
    cfg = results["config"]
    assert results["certified"] >= 1, "the smoke run should certify something"
    for row in results["rows"]:
        again = certify(
            texts(row["selection_counts"], cfg["selection_draws"]),
            texts(row["estimation_counts"], cfg["estimation_draws"]),
            sigma=cfg["sigma"],
            alpha=cfg["alpha"],
        )
        assert again.label == row["label"] and again.certified == row["certified"]
        assert again.radius == row["radius"] and again.p_lower == row["p_lower"]
        assert row["correct"] == (row["label"] == row["gold"])


def test_soundness_is_reported_with_finite_numbers(smoke: tuple[Path, dict[str, Any]]) -> None:
    _, results = smoke
    s, cfg = results["soundness"], results["config"]
    assert s["attacked"] == results["certified"]
    for key in ("flip_rate", "flip_rate_lower", "flip_rate_upper", "allowed_rate", "max_l2"):
        assert isinstance(s[key], float) and math.isfinite(s[key]), key
    assert 0 <= s["flip_rate_lower"] <= s["flip_rate"] <= s["flip_rate_upper"] <= 1
    assert s["flips"] + s["kept"] + s["abstained"] == s["attacked"]
    assert isinstance(s["passes"], bool) and s["allowed_rate"] == 2 * cfg["alpha"]
    for row in results["rows"]:
        if not row["certified"]:
            assert "attack" not in row
            continue
        attack = row["attack"]
        assert attack["eps"] == pytest.approx(cfg["factor"] * row["radius"])
        assert attack["l2"] <= attack["eps"]  # inside the certified ball, as measured
        assert sum(attack["counts"].values()) <= cfg["predict_draws"]
        assert row["control"]["eps"] == pytest.approx(cfg["control_factor"] * row["radius"])
    assert results["control"]["attacked"] == results["certified"]
    assert "Soundness" in (smoke[0] / "results.md").read_text()


def test_the_same_seed_gives_the_same_run(
    smoke: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, first = smoke
    second = run(tmp_path, "--no-control")
    for a, b in zip(first["rows"], second["rows"], strict=True):
        a = {k: v for k, v in a.items() if k != "control"}
        assert a == b


def test_flip_bounds_and_the_pass_rule() -> None:
    assert flip_bounds(0, 10)[0] == 0.0 and flip_bounds(0, 10)[1] == pytest.approx(
        1 - 0.05 ** (1 / 10)
    )
    rows = [{"attack": {"flipped": i < 1, "prediction": "no", "certified": "yes", "l2": 0.1}}
            for i in range(10)]  # fmt: skip
    assert not soundness(rows, alpha=0.001)["passes"]  # 1 in 10 rules out 0.2%
    assert soundness(rows, alpha=0.05)["passes"]
