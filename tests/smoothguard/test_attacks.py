"""White-box attacks: bounded, on the uint8 grid, and effective on the shipped model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smoothguard.attacks import AttackSpec, pgd, to_unit_pixels
from smoothguard.evaluation.run import opposite
from smoothguard.mllm import VisionLanguageModel
from smoothguard.synthpope import HARMFUL_MARKER, load_benchmark, score_yes_no

MODEL = Path(__file__).resolve().parents[2] / "models" / "synthvlm"


@pytest.fixture(scope="module")
def model() -> VisionLanguageModel:
    return VisionLanguageModel.load(MODEL)


@pytest.fixture(scope="module")
def pope() -> list:
    return load_benchmark("test", 6, 1, 1)["pope"]


def test_pgd_flips_answers_within_the_budget(model: VisionLanguageModel, pope: list) -> None:
    spec = AttackSpec(eps=16 / 255, steps=10)
    images = np.stack([it.image for it in pope])
    adv = pgd(
        model,
        images,
        [it.prompt for it in pope],
        push=[opposite(it.answer) for it in pope],
        pull=[it.answer for it in pope],
        spec=spec,
    )
    assert adv.dtype == np.uint8 and adv.shape == (len(pope), *model.image_size, 3)
    original = (to_unit_pixels(model, list(images)).permute(0, 2, 3, 1).numpy() * 255).round()
    assert np.abs(adv.astype(int) - original.astype(int)).max() <= 16
    clean = model.generate(model.preprocess(list(images)), [it.prompt for it in pope], 4)
    attacked = model.generate(model.preprocess(list(adv)), [it.prompt for it in pope], 4)
    clean_ok = sum(score_yes_no(t, it.answer) for it, t in zip(pope, clean, strict=True))
    adv_ok = sum(score_yes_no(t, it.answer) for it, t in zip(pope, attacked, strict=True))
    assert adv_ok < clean_ok


def test_universal_perturbation_is_shared(model: VisionLanguageModel, pope: list) -> None:
    images = np.stack([it.image for it in pope[:3]])
    spec = AttackSpec(eps=8 / 255, steps=2, universal=True, random_start=False)
    adv = pgd(model, images, [it.prompt for it in pope[:3]], push=[HARMFUL_MARKER] * 3, spec=spec)
    delta = adv.astype(int) - images.astype(int)
    interior = (images > 20) & (images < 235)  # away from clipping
    same = (delta[0] == delta[1]) | ~(interior[0] & interior[1])
    assert same.mean() > 0.99


def test_eot_attack_runs_and_is_reproducible(model: VisionLanguageModel, pope: list) -> None:
    images = np.stack([it.image for it in pope[:2]])
    spec = AttackSpec(eps=8 / 255, steps=2, eot_samples=3, sigma=0.15, seed=4)
    args = (model, images, [it.prompt for it in pope[:2]])
    first = pgd(*args, push=["no", "no"], spec=spec)
    second = pgd(*args, push=["no", "no"], spec=spec)
    np.testing.assert_array_equal(first, second)


def test_attack_needs_a_goal(model: VisionLanguageModel, pope: list) -> None:
    with pytest.raises(ValueError, match="push"):
        pgd(model, np.stack([pope[0].image]), [pope[0].prompt], spec=AttackSpec(eps=0.1))


def test_opposite() -> None:
    assert opposite("yes") == "no" and opposite("no") == "yes"
    with pytest.raises(ValueError):
        opposite("maybe")
