"""White-box attacks: bounded (L-inf on the uint8 grid, L2 in float pixels), L-inf unchanged by
the L2 addition, and effective on the shipped model."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.evaluation.attack_runs import opposite
from smoothguard.evaluation.attacks import (
    AttackSpec,
    is_float_pixels,
    normalize_pixels,
    pgd,
    to_unit_pixels,
)
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


class _Toy:
    """A tiny differentiable "image model" on 6x6 images that goes through the image domain
    (normalisation, clipping, the defense's noise), cheap enough for property tests."""

    image_mean = (0.5, 0.4, 0.3)
    image_std = (0.25, 0.3, 0.2)
    image_size = (6, 6)

    def __init__(self) -> None:
        self.w = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(3))

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        x = torch.as_tensor(np.stack(images)).float().permute(0, 3, 1, 2) / 255
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        return (x - mean) / torch.tensor(self.image_std).view(1, 3, 1, 1)

    def answer_logprob(
        self, values: torch.Tensor, prompts: object, answers: list[str]
    ) -> torch.Tensor:
        sign = torch.tensor([1.0 if a == "yes" else -1.0 for a in answers])
        logit = torch.tanh((values * self.w).sum(dim=(1, 2, 3)) / 10)
        return torch.nn.functional.logsigmoid(sign * logit)


TOY_IMAGES = np.random.default_rng(0).integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)


# sha256 prefixes of the uint8 output, computed with the code before L2 attacks were added:
# L-inf attacks must stay bit-identical (their saved copies are replayed by fingerprint).
@pytest.mark.parametrize(
    ("spec", "digest"),
    [
        (AttackSpec(8 / 255, 4, seed=1), "2fdacf9709228be8"),
        (AttackSpec(16 / 255, 3, eot_samples=2, sigma=0.1, seed=2), "b630485e0d085daa"),
        (
            AttackSpec(8 / 255, 2, universal=True, eot_samples=2, noise_unit="pixel", sigma=0.05),
            "2175ba4a9eeb64c9",
        ),
    ],
)
def test_linf_attacks_are_unchanged(spec: AttackSpec, digest: str) -> None:
    torch.set_num_threads(1)
    out = pgd(_Toy(), TOY_IMAGES, ["q", "q"], push=["yes", "no"], pull=["no", "yes"], spec=spec)
    assert out.dtype == np.uint8
    assert hashlib.sha256(out.tobytes()).hexdigest()[:16] == digest


@settings(max_examples=40, deadline=None)
@given(
    eps=st.floats(0.001, 3.0),
    steps=st.integers(0, 4),
    eot=st.sampled_from([0, 2]),
    seed=st.integers(0, 1000),
    random_start=st.booleans(),
    step_scale=st.sampled_from([None, 0.5, 5.0]),
)
def test_l2_attacks_stay_in_the_ball_and_the_image(
    eps: float, steps: int, eot: int, seed: int, random_start: bool, step_scale: float | None
) -> None:
    torch.set_num_threads(1)
    toy = _Toy()
    spec = AttackSpec(
        eps, max(steps, 1), eot_samples=eot, sigma=0.25, noise_unit="pixel", seed=seed,
        random_start=random_start, norm="l2",
        step_size=None if step_scale is None else step_scale * eps,
    )  # fmt: skip
    out = pgd(toy, TOY_IMAGES, ["q", "q"], push=["yes", "no"], pull=["no", "yes"], spec=spec)
    assert is_float_pixels(out) and out.dtype == np.float32 and out.shape == (2, 6, 6, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    clean = to_unit_pixels(toy, list(TOY_IMAGES)).permute(0, 2, 3, 1).numpy().astype(np.float64)
    norms = np.linalg.norm((out.astype(np.float64) - clean).reshape(2, -1), axis=1)
    assert (norms <= eps).all(), (norms, eps)
    mean, std = (np.array(v)[:, None, None] for v in (toy.image_mean, toy.image_std))
    expected = (out.transpose(0, 3, 1, 2) - mean) / std
    np.testing.assert_allclose(normalize_pixels(toy, out), expected, rtol=1e-5, atol=1e-5)


def test_l2_attack_raises_the_objective_and_reproduces() -> None:
    torch.set_num_threads(1)
    toy = _Toy()
    spec = AttackSpec(0.5, 5, norm="l2", seed=4, eot_samples=2, sigma=0.1, noise_unit="pixel")
    args = (toy, TOY_IMAGES, ["q", "q"])
    first = pgd(*args, push=["yes", "no"], pull=["no", "yes"], spec=spec)
    second = pgd(*args, push=["yes", "no"], pull=["no", "yes"], spec=spec)
    np.testing.assert_array_equal(first, second)
    clean = torch.as_tensor(toy.preprocess(list(TOY_IMAGES)))
    adv = torch.as_tensor(normalize_pixels(toy, first))
    score = lambda v: toy.answer_logprob(v, None, ["yes", "no"])  # noqa: E731
    assert (score(adv) > score(clean)).all()


def test_l2_specs_refuse_universal_and_unknown_norms() -> None:
    with pytest.raises(ValueError, match="universal"):
        AttackSpec(0.5, norm="l2", universal=True)
    with pytest.raises(ValueError, match="norm"):
        AttackSpec(0.5, norm="l1")
    with pytest.raises(TypeError, match="float"):
        normalize_pixels(_Toy(), TOY_IMAGES)
