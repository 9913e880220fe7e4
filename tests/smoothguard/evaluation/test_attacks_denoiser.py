"""EOT attacks through denoised smoothing: the attacker differentiates the denoiser as well as
the noise (never attacking a weaker defense than the one served), and saved attacks are only
replayed for the denoiser they were computed through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smoothguard.adapters.denoise_copies import CopyDenoiser
from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.evaluation.attack_runs import AttackRun, _fingerprint, opposite
from smoothguard.evaluation.attacks import AttackSpec, pgd
from smoothguard.synthetic.synthpope import load_benchmark

REPO_ROOT = Path(__file__).resolve().parents[3]
MODEL = REPO_ROOT / "models" / "synthvlm"
DENOISER = REPO_ROOT / "models" / "denoiser"
EOT = AttackSpec(eps=8 / 255, steps=3, eot_samples=2, sigma=0.25, noise_unit="pixel", seed=3)


@pytest.fixture(scope="module")
def model() -> VisionLanguageModel:
    return VisionLanguageModel.load(MODEL)


def test_the_denoiser_is_part_of_what_eot_differentiates(model: VisionLanguageModel) -> None:
    items = load_benchmark("test", 2, 0, 0)["pope"]
    images = np.stack([it.image for it in items])
    prompts = [it.prompt for it in items]
    push, pull = [opposite(it.answer) for it in items], [it.answer for it in items]
    calls: list[float] = []
    denoiser = CopyDenoiser.load(DENOISER, model.image_mean, model.image_std)

    def spy(values, sigma):
        calls.append(sigma)
        assert values.requires_grad  # the gradient path runs through it
        return denoiser.normalised(values, sigma)

    through = pgd(model, images, prompts, push=push, pull=pull, spec=EOT, denoise=spy)
    plain = pgd(model, images, prompts, push=push, pull=pull, spec=EOT)
    assert len(calls) == EOT.steps + 1 and all(s == pytest.approx(0.25) for s in calls)
    assert np.abs(through.astype(int) - plain.astype(int)).max() > 0
    assert np.abs(through.astype(int) - np.rint(images).astype(int)).max() <= 8


def test_saved_eot_attacks_are_keyed_by_the_denoiser_and_transfer_attacks_are_not() -> None:
    items = load_benchmark("test", 2, 0, 0)["pope"]
    eot = AttackRun("eot-pgd-8", "pope", EOT, "flip")
    transfer = AttackRun("pgd-8", "pope", AttackSpec(8 / 255, 3), "flip")
    assert _fingerprint(eot, items, MODEL, DENOISER) != _fingerprint(eot, items, MODEL)
    assert _fingerprint(transfer, items, MODEL, DENOISER) == _fingerprint(transfer, items, MODEL)
