"""White-box attacks on the vision-language model through PyTorch autograd.

All attacks work on images at the model's input resolution in [0, 1] pixel space. The L-inf
attacks (`AttackSpec.norm` "linf", the default) are bounded by `eps` per pixel (8/255 means
eight grey levels) and return uint8 images on that grid, so an attack computed once replays
bit-exactly through the served endpoint (which resizes an image already at the model's
resolution to itself). L2 attacks (`norm="l2"`, for testing certified radii) are bounded by
`eps` in L2 over the whole image and return float32 [0, 1] images (`is_float_pixels`), since
rounding to uint8 alone moves a 64x64 image by ~0.13 in L2 (up to 0.22), as much as the radii;
they are fed to the model in process (`normalize_pixels`), never saved for replay.

- `pgd`: per-image PGD ascending log p(push answers) - log p(pull answers), cosine-decayed
  step size, each input's best iterate kept; untargeted
  yes/no flipping pushes the wrong answer and pulls the gold one, the targeted jailbreak-style
  attack pushes the harmful marker.
- `universal=True`: one perturbation shared by every image of the batch.
- `eot_samples > 0`: the adaptive attack on randomized defenses (Athalye et al.), the gradient
  averaged over the same Gaussian noise the defense adds: with `norm="l2"` and the certified
  sigma in pixel units this attacks the smoothed classifier (Salman et al. 2019).

Other modalities: a model with an `attack_domain()` method supplies its own input space
(encode / project / model_input / noisy / decode, see `_ImageDomain`); audio models use the
waveform itself (smoothguard.synthetic.synthalm.model.WaveformDomain), with `eps` in its units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smoothguard.core.noise import normalized_sigma, pixel_noise_level

# Bumped whenever `pgd` changes what it computes for the same spec, so that saved attacks
# (smoothguard.evaluation) made by an older algorithm are recomputed, not replayed.
# 2: cosine-decayed 2 eps steps, best iterate kept per input. (L2 attacks are never saved.)
ALGORITHM_REVISION = 2
NORMS = ("linf", "l2")
# Normalised noisy copies and their pixel-unit sigma -> denoised copies (CopyDenoiser.normalised)
Denoise = Callable[[torch.Tensor, float], torch.Tensor]


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
    # "linf" (uint8 out) or "l2" (float32 [0, 1] out). Left out of a saved attack's fingerprint
    # when "linf", so attacks saved before the field existed are still replayed.
    norm: str = "linf"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.norm == "l2" and self.universal:
            raise ValueError("universal L2 attacks are not supported")

    @property
    def alpha(self) -> float:
        """First step size, 2 eps unless given: PGD's sign steps then sweep the whole ball
        early (escaping the flat start) and the cosine decay below refines the end (as APGD
        does). On SynthVLM's POPE items (64, eps 8/255, 40 steps) undefended accuracy after the
        attack was 25% with the old fixed 2.5 eps / steps, 12.5% with eps / 2, 7.8% with 2 eps."""
        return self.step_size if self.step_size is not None else 2.0 * self.eps

    def step_at(self, step: int) -> float:
        """Cosine-decayed step size for step `step` of `steps`."""
        return self.alpha * 0.5 * (1.0 + math.cos(math.pi * step / self.steps))


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


def is_float_pixels(images: np.ndarray) -> bool:
    """True for an L2 attack's output (float [0, 1] pixels), which must not be read as uint8."""
    return np.asarray(images).dtype.kind == "f"


def normalize_pixels(model: Any, images: np.ndarray) -> np.ndarray:
    """float [B,H,W,3] in [0, 1] at the model's resolution -> the model's normalised
    [B,3,H,W] float32, without the processor's resize and rescale (which would re-quantise or
    divide by 255 again)."""
    if not is_float_pixels(images):
        raise TypeError(f"expected float [0, 1] pixels, got {np.asarray(images).dtype}")
    x = torch.as_tensor(np.asarray(images, np.float32)).permute(0, 3, 1, 2)
    if tuple(x.shape[2:]) != tuple(model.image_size):
        raise ValueError(f"images must be at the model's resolution {model.image_size}")
    return _Normalizer(model)(x).contiguous().numpy()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [0,1] -> uint8 [B,H,W,3]."""
    array = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).contiguous().numpy()


class _ImageDomain:
    """Images: attacked in [0, 1] pixel space, normalised for the model, uint8 out."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.norm = _Normalizer(model)
        self.noise_unit = "normalized"

    def encode(self, inputs: Sequence[np.ndarray]) -> torch.Tensor:
        return to_unit_pixels(self.model, inputs)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, 1)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def noisy(
        self, values: torch.Tensor, samples: int, sigma: float, generator: torch.Generator
    ) -> torch.Tensor:
        """[B,3,H,W] normalised -> [samples * B,3,H,W], the defense's clipped Gaussian copies."""
        scale = torch.tensor(normalized_sigma(sigma, self.noise_unit, self.norm.std.flatten()))
        noise = torch.randn((samples, *values.shape), generator=generator) * scale.view(
            1, 1, 3, 1, 1
        )
        low, high = self.norm.bounds()
        noisy = (values.unsqueeze(0) + noise).clamp(low, high)
        return noisy.reshape(-1, *values.shape[1:])

    def decode(self, x: torch.Tensor) -> np.ndarray:
        return to_uint8(x.clamp(0, 1))

    def decode_float(self, x: torch.Tensor) -> np.ndarray:
        """[B,3,H,W] -> float32 [B,H,W,3] in [0, 1], off the uint8 grid (L2 attacks)."""
        return x.detach().clamp(0, 1).permute(0, 2, 3, 1).contiguous().numpy()


def _l2_norms(x: torch.Tensor) -> torch.Tensor:
    """Per input, shaped to broadcast against x."""
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))


def _l2_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale each input's delta into the L2 ball of radius eps (a projection)."""
    norms = _l2_norms(delta)
    return delta * torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)


def _domain(model: Any, spec: AttackSpec) -> Any:
    make = getattr(model, "attack_domain", None)
    if callable(make):
        return make()
    domain = _ImageDomain(model)
    domain.noise_unit = spec.noise_unit
    return domain


def _objective(
    model: Any,
    domain: Any,
    x: torch.Tensor,
    prompts: Sequence[str],
    push: Sequence[str] | None,
    pull: Sequence[str] | None,
    spec: AttackSpec,
    generator: torch.Generator,
    denoise: Denoise | None = None,
) -> torch.Tensor:
    """[B] per input: log p(push) - log p(pull), averaged over the EOT noise draws (and,
    with a denoiser, through it: the attacker differentiates every step the defense takes)."""
    values = domain.model_input(x)
    k = max(spec.eot_samples, 1)
    if spec.eot_samples > 0:
        values = domain.noisy(values, k, spec.sigma, generator)
        if denoise is not None:
            std = domain.norm.std.flatten().tolist()
            values = denoise(values, pixel_noise_level(spec.sigma, spec.noise_unit, std))
        prompts, push, pull = (None if s is None else list(s) * k for s in (prompts, push, pull))
    total = torch.zeros(values.shape[0])
    if push is not None:
        total = total + model.answer_logprob(values, prompts, push)
    if pull is not None:
        total = total - model.answer_logprob(values, prompts, pull)
    return total.reshape(k, -1).mean(dim=0)


def pgd(
    model: Any,
    images: Sequence[np.ndarray],
    prompts: Sequence[str],
    *,
    push: Sequence[str] | None = None,
    pull: Sequence[str] | None = None,
    spec: AttackSpec,
    progress: Any | None = None,
    denoise: Denoise | None = None,
) -> np.ndarray:
    """Adversarial inputs: uint8 images [B,H,W,3] for L-inf specs; float32 [B,H,W,3] in
    [0, 1] for L2 specs (within eps of the clean image in L2, off the uint8 grid); or the
    domain's own (e.g. float32 waveforms).

    `progress(n)` is called once per step if given; `denoise` (normalised copies, pixel
    sigma -> normalised copies, differentiable) follows each EOT noise draw.
    """
    if push is None and pull is None:
        raise ValueError("an attack needs answers to push towards or pull away from")
    generator = torch.Generator().manual_seed(spec.seed)
    domain = _domain(model, spec)
    x = domain.encode(images)
    shape = (1, *x.shape[1:]) if spec.universal else tuple(x.shape)
    if spec.norm == "l2":
        return _pgd_l2(model, domain, x, prompts, push, pull, spec, generator, progress, denoise)
    if spec.random_start:
        delta = (torch.rand(shape, generator=generator) * 2 - 1) * spec.eps
    else:
        delta = torch.zeros(shape)
    delta = (domain.project(x + delta) - x) if not spec.universal else delta
    best_delta = delta.clone()
    best = torch.full((1,) if spec.universal else (x.shape[0],), -float("inf"))
    for step in range(spec.steps + 1):
        delta.requires_grad_(True)
        adv = domain.project(x + delta)
        per_input = _objective(model, domain, adv, prompts, push, pull, spec, generator, denoise)
        with torch.no_grad():
            # Keep each input's best iterate: a fixed-step PGD ends wherever it oscillates.
            score = per_input.detach().sum().reshape(1) if spec.universal else per_input.detach()
            better = score > best
            best = torch.where(better, score, best)
            mask = better.view(-1, *([1] * (delta.dim() - 1)))
            best_delta = torch.where(mask, delta.detach(), best_delta)
        if step == spec.steps:
            break
        (grad,) = torch.autograd.grad(per_input.sum(), delta)
        with torch.no_grad():
            delta = (delta + spec.step_at(step) * grad.sign()).clamp(-spec.eps, spec.eps)
            if not spec.universal:
                delta = domain.project(x + delta) - x
        if progress is not None:
            progress(1)
    return domain.decode(domain.project(x + best_delta))


def _pgd_l2(
    model: Any,
    domain: Any,
    x: torch.Tensor,
    prompts: Sequence[str],
    push: Sequence[str] | None,
    pull: Sequence[str] | None,
    spec: AttackSpec,
    generator: torch.Generator,
    progress: Any | None,
    denoise: Denoise | None = None,
) -> np.ndarray:
    """PGD in L2: steps along each input's unit gradient, then into the eps ball and the valid
    range. Clamping to the range only shrinks each coordinate of delta, so the L2 bound holds
    after it."""
    if spec.random_start:  # a uniform radius in a random direction
        direction = torch.randn(x.shape, generator=generator)
        radius = torch.rand((x.shape[0],), generator=generator).view(-1, *([1] * (x.dim() - 1)))
        delta = direction / _l2_norms(direction).clamp_min(1e-12) * radius * spec.eps
    else:
        delta = torch.zeros_like(x)
    delta = domain.project(x + _l2_ball(delta, spec.eps)) - x
    best_delta = delta.clone()
    best = torch.full((x.shape[0],), -float("inf"))
    for step in range(spec.steps + 1):
        delta.requires_grad_(True)
        per_input = _objective(
            model, domain, x + delta, prompts, push, pull, spec, generator, denoise
        )
        with torch.no_grad():
            better = per_input.detach() > best
            best = torch.where(better, per_input.detach(), best)
            mask = better.view(-1, *([1] * (delta.dim() - 1)))
            best_delta = torch.where(mask, delta.detach(), best_delta)
        if step == spec.steps:
            break
        (grad,) = torch.autograd.grad(per_input.sum(), delta)
        with torch.no_grad():
            unit = grad / _l2_norms(grad).clamp_min(1e-12)
            delta = _l2_ball(delta + spec.step_at(step) * unit, spec.eps)
            delta = domain.project(x + delta) - x
        if progress is not None:
            progress(1)
    # Rounding x + delta to float32 moves each value by up to 2^-25 (values <= 1), so the
    # image by up to sqrt(D) 2^-25 in L2: pull delta in by twice that (and a relative hair for
    # the norm's own rounding) so the output is within eps even measured in float64.
    margin = math.sqrt(x[0].numel()) * 2.0**-24
    inside = max(spec.eps - margin, 0.0) * (1 - 1e-6)
    adv = domain.project(x + _l2_ball(domain.project(x + best_delta) - x, inside))
    decode = getattr(domain, "decode_float", None)
    return decode(adv) if callable(decode) else domain.decode(adv)
