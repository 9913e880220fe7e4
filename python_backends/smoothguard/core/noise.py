"""Gaussian copies of an image, the "smoothing" half of SmoothGuard.

Units. The model processor hands us ``z = (x - mean) / std`` with ``x`` in [0, 1]. The
paper's reference code adds ``sigma * N(0, 1)`` to ``z`` itself, so its sigma is in
*normalised* units; in pixel units that is ``sigma_pixel[c] = sigma * std[c]``. With CLIP
statistics (std ~= 0.27) the default sigma 0.15 is therefore only ~0.04 in [0, 1] pixel
units (~10/255). ``unit="pixel"`` lets an operator state sigma in pixel units instead; the
noise added to ``z`` is then ``sigma / std[c]`` per channel.

Clipping keeps every noisy copy a valid image: the normalised image of [0, 1] for channel c
is ``[(0 - mean[c]) / std[c], (1 - mean[c]) / std[c]]``.

The Gaussian copies themselves (`gaussian_copies`) are shared with smoothguard.core.audio, which
only derives another std (per clip) and clips to full scale instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from smoothguard.core.settings import NOISE_UNITS, NoiseUnit
from smoothguard.core.xp import array_module


def make_rng(xp: ModuleType, seed: int | None) -> Any:
    """A Generator for `xp`; without a seed it draws OS entropy so noise is unpredictable.

    An attacker who can predict the noise can optimise a perturbation against the exact
    copies we will generate, so the unseeded path must never fall back to a fixed seed.
    """
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if xp is np:
        if seed is None:
            return np.random.Generator(np.random.PCG64(np.random.SeedSequence(_entropy())))
        return np.random.default_rng(seed)
    # CuPy's Generator (XORWOW) takes an integer seed; 63 bits of OS entropy is plenty.
    if seed is None:
        seed = _entropy() & ((1 << 63) - 1)
    return xp.random.default_rng(seed)


def _entropy() -> int:
    return int.from_bytes(os.urandom(16), "little")


def pixel_sigma(sigma: float, unit: NoiseUnit, std: Sequence[float]) -> tuple[float, ...]:
    """Per-channel noise std in [0, 1] pixel units, for reports that compare settings."""
    _check_unit(unit)
    if unit == "pixel":
        return tuple(float(sigma) for _ in std)
    return tuple(float(sigma) * float(s) for s in std)


def normalized_sigma(sigma: float, unit: NoiseUnit, std: Sequence[float]) -> tuple[float, ...]:
    """Per-channel noise std in the processor's normalised space (what is actually added)."""
    _check_unit(unit)
    if unit == "normalized":
        return tuple(float(sigma) for _ in std)
    return tuple(float(sigma) / float(s) for s in std)


def pixel_noise_level(sigma: float, unit: NoiseUnit, std: Sequence[float]) -> float:
    """One pixel-unit noise level for a denoiser's conditioning: the RMS of the per-channel
    pixel std (sigma itself for "pixel" noise), what a denoiser trained on isotropic pixel
    noise sees on average."""
    if unit == "pixel":
        return float(sigma)
    return float(np.sqrt(np.mean(np.square(pixel_sigma(sigma, unit, std)))))


# How many standard deviations of noise a value may lie outside the normalised image range
# before it counts as "no image": a Gaussian draw past 10 sigma has probability ~1e-23, so no
# noisy copy ever gets there, while 1e30 (or anything that overflows when squared) always does.
NOISE_TAILS = 10.0


def noise_value_bound(
    mean: Sequence[float], std: Sequence[float], *, sigma_max: float, unit: NoiseUnit
) -> float:
    """The largest |value| a noisy copy made by `noisy_copies` can reasonably hold: the
    normalised image range of [0, 1] pixels, widened by NOISE_TAILS x the largest noise std
    the server allows. Steps that take pixel values from a caller refuse anything beyond it."""
    mean_a = np.asarray(mean, dtype=np.float64)
    std_a = np.asarray(std, dtype=np.float64)
    edge = float(np.max(np.maximum(np.abs(-mean_a / std_a), np.abs((1.0 - mean_a) / std_a))))
    return edge + NOISE_TAILS * max(normalized_sigma(sigma_max, unit, std))


def gaussian_copies(
    x: Any,
    *,
    num_samples: int,
    std: Any,
    rng: Any,
    item_ndim: int,
    xp: ModuleType | None = None,
) -> Any:
    """``[..., *item]`` -> ``[..., N, *item]`` float32: copy 0 is `x`, untouched; copy i > 0 is
    ``x + std * N(0, 1)``, drawn in one go from `rng`, in order.

    The smoothing itself, written once: image copies (std per channel) and audio copies (std per
    clip, smoothguard.core.audio) both come from here, so a seed means the same draws in either,
    and each modality only derives its std and bounds its own copies. `std` broadcasts against
    ``[..., N - 1, *item]``; `xp` is x's array module (asked for when not given).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    xp = array_module(x) if xp is None else xp
    x = xp.asarray(x, dtype=xp.float32)
    lead = x.ndim - item_ndim
    item = (slice(None),) * item_ndim
    out = xp.empty((*x.shape[:lead], num_samples, *x.shape[lead:]), dtype=xp.float32)
    out[(..., 0, *item)] = x
    if num_samples == 1:
        return out
    _add_noise(out[(..., slice(1, None), *item)], x[(..., None, *item)], std, rng, xp)
    return out


def _add_noise(noisy: Any, x: Any, std: Any, rng: Any, xp: ModuleType) -> None:
    """``noisy = x + std * N(0, 1)`` in place, the draws taken from `rng` in order (so drawing
    the copies in two calls takes the same numbers as drawing them in one)."""
    # Drawn straight into the output: no second buffer to allocate and fault in (with the image
    # bounds' maximum/minimum, 2.5 -> 1.6 ms for ten 64x64 copies, measured in process).
    if noisy.flags.c_contiguous and isinstance(rng, np.random.Generator) == (xp is np):
        rng.standard_normal(dtype=np.float32, out=noisy)
    else:
        # asarray: a host Generator with device input still works (one transfer), never
        # silently the other way round.
        noisy[...] = xp.asarray(rng.standard_normal(noisy.shape, dtype=np.float32))
    noisy *= std
    noisy += x


def noisy_copies(
    pixel_values: Any,
    *,
    num_samples: int,
    sigma: float,
    unit: NoiseUnit = "normalized",
    clip: bool = True,
    mean: Sequence[float],
    std: Sequence[float],
    rng: Any,
) -> Any:
    """``[..., C, H, W]`` -> ``[..., N, C, H, W]`` float32; copy 0 is the input, untouched.

    Copy 0 stays exact (not clipped, not re-quantised) because the policy compares the
    unperturbed answer with the noisy consensus; altering it would blur that signal.
    """
    xp = array_module(pixel_values)
    if pixel_values.ndim < 3:
        raise ValueError(f"pixel_values must be [..., C, H, W], got shape {pixel_values.shape}")
    scale = _image_noise_scale(pixel_values, sigma, unit, mean, std, xp)
    out = gaussian_copies(
        pixel_values, num_samples=num_samples, std=scale, rng=rng, item_ndim=3, xp=xp
    )
    if clip and num_samples > 1:
        _clip_to_image(out[..., 1:, :, :, :], mean, std, xp)
    return out


class CopyStream:
    """One image's N inputs drawn a round at a time: `take(range(0, 4))` then
    `take(range(4, 10))` gives exactly the copies `noisy_copies(..., num_samples=10)` makes
    with the same generator, bit for bit (the draws are taken in order), so adaptive sampling
    draws and ships only the copies a round asks for and a seed still means the same copies.
    Copy 0 is the image itself, as in `noisy_copies`."""

    def __init__(
        self,
        pixel_values: Any,
        *,
        num_samples: int,
        sigma: float,
        unit: NoiseUnit = "normalized",
        clip: bool = True,
        mean: Sequence[float],
        std: Sequence[float],
        rng: Any,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.xp = array_module(pixel_values)
        if pixel_values.ndim != 3:
            raise ValueError(f"pixel_values must be [C, H, W], got shape {pixel_values.shape}")
        self.scale = _image_noise_scale(pixel_values, sigma, unit, mean, std, self.xp)
        self.image = self.xp.asarray(pixel_values, dtype=self.xp.float32)
        self.num_samples, self.clip, self.rng = num_samples, clip, rng
        self.mean, self.std = mean, std
        self._next = 0

    def skip_to(self, start: int, *, replay: bool) -> None:
        """Go on from copy `start` when copies 0..start-1 were drawn elsewhere (the ensemble's
        noise step ships a first round; generate draws the rest). `replay` draws and drops
        them first, as a seeded stream must to give the same copies; an unseeded stream just
        moves on (its draws are fresh entropy whichever copy they go to)."""
        if replay:
            self.take(range(self._next, start))
        elif not self._next <= start <= self.num_samples:
            raise ValueError(f"cannot skip from copy {self._next} to {start}")
        self._next = start

    def take(self, indices: range) -> Any:
        """Copies ``indices`` ([K, C, H, W] float32): the next ones, in order."""
        if indices.step != 1 or indices.start != self._next or indices.stop > self.num_samples:
            raise ValueError(
                f"copies {indices} asked; the next are {self._next}.. of {self.num_samples}"
            )
        xp = self.xp
        out = xp.empty((len(indices), *self.image.shape), dtype=xp.float32)
        first = 1 if indices.start == 0 and len(indices) else 0
        if first:
            out[0] = self.image
        if len(indices) > first:
            noisy = out[first:]
            _add_noise(noisy, self.image[None], self.scale, self.rng, xp)
            if self.clip:
                _clip_to_image(noisy, self.mean, self.std, xp)
        self._next = indices.stop
        return out


def _image_noise_scale(
    pixel_values: Any,
    sigma: float,
    unit: NoiseUnit,
    mean: Sequence[float],
    std: Sequence[float],
    xp: ModuleType,
) -> Any:
    """The noise std added to each channel of a normalised image, [C, 1, 1] float32."""
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite non-negative number, got {sigma}")
    _check_unit(unit)
    channels = pixel_values.shape[-3]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean/std need one value per channel ({channels}), got {len(mean)} and {len(std)}"
        )
    if any(not float(s) > 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    return xp.asarray(normalized_sigma(sigma, unit, std), dtype=xp.float32)[:, None, None]


def _clip_to_image(noisy: Any, mean: Sequence[float], std: Sequence[float], xp: ModuleType) -> None:
    """Noisy copies back inside the normalised image of [0, 1] pixels, in place."""
    # maximum/minimum rather than clip with per-channel bounds: the same numbers, faster.
    mean_a = np.asarray(mean, dtype=np.float64)
    std_a = np.asarray(std, dtype=np.float64)
    lo = xp.asarray(((0.0 - mean_a) / std_a).astype(np.float32))[:, None, None]
    hi = xp.asarray(((1.0 - mean_a) / std_a).astype(np.float32))[:, None, None]
    xp.maximum(noisy, lo, out=noisy)
    xp.minimum(noisy, hi, out=noisy)


def _check_unit(unit: str) -> None:
    if unit not in NOISE_UNITS:
        raise ValueError(f"unit must be one of {NOISE_UNITS}, got {unit!r}")
