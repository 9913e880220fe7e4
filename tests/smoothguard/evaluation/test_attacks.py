"""White-box attacks: bounded, on the uint8 grid, and effective on the shipped model."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.evaluation.attack_runs import opposite
from smoothguard.evaluation.attacks import AttackSpec, pgd, to_unit_pixels
from smoothguard.synthetic.synthpope import HARMFUL_MARKER, load_benchmark, score_yes_no

MODEL = Path(__file__).resolve().parents[3] / "models" / "synthvlm"


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


class _Line:
    """A model whose objective is known in closed form: log p(push) = -(x - 0.3)^2 per input,
    on a one-number input domain, so every visited iterate can be scored exactly."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def attack_domain(self) -> _Line:
        return self

    def encode(self, inputs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(inputs, np.float32)).reshape(-1, 1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1.0, 1.0)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().numpy().reshape(-1)

    def answer_logprob(
        self, values: torch.Tensor, prompts: object, answers: object
    ) -> torch.Tensor:
        score = -((values[:, 0] - 0.3) ** 2)
        self.seen.append(score.detach().numpy().copy())
        return score


def test_pgd_returns_each_inputs_best_iterate() -> None:
    line = _Line()
    spec = AttackSpec(eps=1.0, steps=5, seed=1)
    out = pgd(line, np.zeros(4, np.float32), ["q"] * 4, push=["a"] * 4, spec=spec)
    best = np.max(np.stack(line.seen), axis=0)
    np.testing.assert_allclose(-((out - 0.3) ** 2), best, rtol=0, atol=1e-6)


def test_step_size_starts_at_two_eps_and_decays_to_zero() -> None:
    spec = AttackSpec(eps=8 / 255, steps=40)
    sizes = [spec.step_at(t) for t in range(spec.steps + 1)]
    assert sizes[0] == pytest.approx(2 * spec.eps) and sizes[-1] == pytest.approx(0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(sizes))
    assert AttackSpec(eps=0.1, step_size=0.01).step_at(0) == pytest.approx(0.01)
