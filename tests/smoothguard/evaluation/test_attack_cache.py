"""Saved attacks are reused only for the same attack, items and model weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoothguard.evaluation import attack_runs
from smoothguard.evaluation.attack_runs import AttackRun, _fingerprint, model_fingerprint
from smoothguard.evaluation.attacks import AttackSpec
from smoothguard.evaluation.config import EvalConfig


class _Item:
    source_seed, prompt = 7, "Is there a red circle in the image?"


def test_new_weights_invalidate_a_saved_attack(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights v1")
    run = AttackRun("pgd-8", "pope", AttackSpec(8, 10), "flip")
    before = _fingerprint(run, [_Item()], tmp_path)
    assert _fingerprint(run, [_Item()], tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"weights v2")
    assert _fingerprint(run, [_Item()], tmp_path) != before
    assert model_fingerprint(tmp_path) != model_fingerprint(tmp_path / "missing")


def test_a_new_attack_algorithm_invalidates_a_saved_attack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    run = AttackRun("pgd-8", "pope", AttackSpec(8, 10), "flip")
    before = _fingerprint(run, [_Item()], tmp_path)
    monkeypatch.setattr(attack_runs, "ALGORITHM_REVISION", attack_runs.ALGORITHM_REVISION + 1)
    assert _fingerprint(run, [_Item()], tmp_path) != before


def test_restarts_change_the_saved_attack(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    once = AttackRun("pgd-8", "pope", AttackSpec(8, 10), "flip")
    again = AttackRun("pgd-8", "pope", AttackSpec(8, 10), "flip", restarts=2)
    assert _fingerprint(once, [_Item()], tmp_path) != _fingerprint(again, [_Item()], tmp_path)


def test_linf_fingerprints_are_those_saved_before_l2_attacks(tmp_path: Path) -> None:
    """Pinned from the code before AttackSpec had `norm`: saved L-inf attacks still replay."""
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    pgd8 = AttackRun("pgd-8", "pope", AttackSpec(8 / 255, 100), "flip", restarts=3)
    eot = AttackRun("pgd-8", "pope", AttackSpec(16 / 255, 40, eot_samples=8), "flip")
    assert _fingerprint(pgd8, [_Item()], tmp_path) == "258ba80065b29fe5"
    assert _fingerprint(eot, [_Item()], tmp_path) == "3d682d773df95828"
    l2 = AttackRun("pgd-8", "pope", AttackSpec(16 / 255, 40, eot_samples=8, norm="l2"), "flip")
    assert _fingerprint(l2, [_Item()], tmp_path) != "3d682d773df95828"


def test_l2_attacks_are_never_saved_for_replay(tmp_path: Path) -> None:
    """Their float images are off the uint8 grid the replay path reads."""
    run = AttackRun("l2", "pope", AttackSpec(0.5, 2, norm="l2"), "flip")
    config = EvalConfig(out=tmp_path, model_path=tmp_path)
    with pytest.raises(ValueError, match="L-inf"):
        attack_runs.compute_attack(object(), run, [_Item()], config, "marker")
