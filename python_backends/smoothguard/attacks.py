"""White-box attacks on the vision-language model through PyTorch autograd.

All attacks work on images at the model's input resolution in [0, 1] pixel space, bounded in
L-inf by `eps` (8/255 means eight grey levels), and return uint8 images on that grid so an
attack computed once replays bit-exactly through the served endpoint (which resizes an image
already at the model's resolution to itself).

- `pgd`: per-image PGD ascending log p(push answers) - log p(pull answers); untargeted
  yes/no flipping pushes the wrong answer and pulls the gold one, the targeted jailbreak-style
  attack pushes the harmful marker.
- `universal=True`: one perturbation shared by every image of the batch.
- `eot_samples > 0`: the adaptive attack on randomized defenses (Athalye et al.), the gradient
  averaged over the same Gaussian noise the defense adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smoothguard.noise import normalized_sigma


@dataclass(frozen=True)
class AttackSpec:
    eps: float
    steps: int = 40
    step_size: float | None = None
    universal: bool = False
    eot_samples: int = 0
    sigma: float = 0.15
    noise_unit: str = "normalized"
    random_start: bool = True
    seed: int = 0

    @property
    def alpha(self) -> float:
        """Step size: 2.5 eps / steps lets PGD cross the ball and still refine (Madry et al.)."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


class _Normalizer:
    def __init__(self, model: Any) -> None:
        self.mean = torch.tensor(model.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(model.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (0 - self.mean) / self.std, (1 - self.mean) / self.std


def to_unit_pixels(model: Any, images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 images -> [B,3,H,W] in [0,1] at the model's resolution, on the uint8 grid."""
    norm = _Normalizer(model)
    values = model.preprocess(list(images)).float() * norm.std + norm.mean
    return (values.clamp(0, 1) * 255).round() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [0,1] -> uint8 [B,H,W,3]."""
    array = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).contiguous().numpy()


def _objective(
    model: Any,
    norm: _Normalizer,
    x: torch.Tensor,
    prompts: Sequence[str],
    push: Sequence[str] | None,
    pull: Sequence[str] | None,
    spec: AttackSpec,
    generator: torch.Generator,
) -> torch.Tensor:
    pixel_values = norm(x)
    if spec.eot_samples > 0:
        k = spec.eot_samples
        sigma = torch.tensor(normalized_sigma(spec.sigma, spec.noise_unit, norm.std.flatten()))
        noise = torch.randn((k, *pixel_values.shape), generator=generator) * sigma.view(
            1, 1, 3, 1, 1
        )
        low, high = norm.bounds()
        noisy = (pixel_values.unsqueeze(0) + noise).clamp(low, high)
        pixel_values = noisy.reshape(-1, *pixel_values.shape[1:])
        prompts, push, pull = (None if s is None else list(s) * k for s in (prompts, push, pull))
    total = torch.zeros(pixel_values.shape[0])
    if push is not None:
        total = total + model.answer_logprob(pixel_values, prompts, push)
    if pull is not None:
        total = total - model.answer_logprob(pixel_values, prompts, pull)
    return total.sum() / max(spec.eot_samples, 1)


def pgd(
    model: Any,
    images: Sequence[np.ndarray],
    prompts: Sequence[str],
    *,
    push: Sequence[str] | None = None,
    pull: Sequence[str] | None = None,
    spec: AttackSpec,
    progress: Any | None = None,
) -> np.ndarray:
    """Adversarial uint8 images [B,H,W,3]; `progress(n)` is called once per step if given."""
    if push is None and pull is None:
        raise ValueError("an attack needs answers to push towards or pull away from")
    generator = torch.Generator().manual_seed(spec.seed)
    norm = _Normalizer(model)
    x = to_unit_pixels(model, images)
    shape = (1, *x.shape[1:]) if spec.universal else tuple(x.shape)
    if spec.random_start:
        delta = (torch.rand(shape, generator=generator) * 2 - 1) * spec.eps
    else:
        delta = torch.zeros(shape)
    delta = ((x + delta).clamp(0, 1) - x) if not spec.universal else delta
    for _ in range(spec.steps):
        delta.requires_grad_(True)
        adv = (x + delta).clamp(0, 1)
        objective = _objective(model, norm, adv, prompts, push, pull, spec, generator)
        (grad,) = torch.autograd.grad(objective, delta)
        with torch.no_grad():
            delta = (delta + spec.alpha * grad.sign()).clamp(-spec.eps, spec.eps)
            if not spec.universal:
                delta = (x + delta).clamp(0, 1) - x
        if progress is not None:
            progress(1)
    return to_uint8((x + delta.detach()).clamp(0, 1))
