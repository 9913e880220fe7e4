"""Noisy copies: copy 0 exact, noise of the right size in the right units, valid pixels."""

from __future__ import annotations

import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothguard.core.noise import make_rng, noise_value_bound, noisy_copies, pixel_sigma

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A processor-normalised image: pixels in [0, 1] mapped through (x - mean) / std."""
    x = np.random.default_rng(seed).uniform(0.0, 1.0, size=shape)
    mean = np.asarray(CLIP_MEAN)[:, None, None]
    std = np.asarray(CLIP_STD)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


def _copies(img: np.ndarray, n: int = 8, sigma: float = 0.15, seed: int | None = 0, **kw):
    return noisy_copies(
        img,
        num_samples=n,
        sigma=sigma,
        unit=kw.pop("unit", "normalized"),
        clip=kw.pop("clip", False),
        mean=CLIP_MEAN,
        std=CLIP_STD,
        rng=make_rng(np, seed),
    )


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    n=st.integers(1, 6),
    hw=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    clip=st.booleans(),
    unit=st.sampled_from(["normalized", "pixel"]),
)
def test_shape_dtype_and_copy_zero_exact(lead, n, hw, clip, unit) -> None:
    img = _image((*lead, 3, *hw))
    out = _copies(img, n=n, clip=clip, unit=unit, sigma=0.5)
    assert out.shape == (*lead, n, 3, *hw)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0, :, :, :], img)
    if n > 1 and clip is False:
        assert not np.array_equal(out[..., 1, :, :, :], img)


def test_copy_zero_is_not_clipped() -> None:
    img = np.full((3, 4, 4), 100.0, dtype=np.float32)  # far outside the valid range
    out = _copies(img, n=3, clip=True)
    np.testing.assert_array_equal(out[0], img)
    hi = (1.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    assert np.all(out[1:] <= hi[:, None, None].astype(np.float32))


@pytest.mark.parametrize("sigma", [0.05, 0.15, 0.5])
def test_normalized_noise_std(sigma: float) -> None:
    img = _image((3, 64, 64))
    out = _copies(img, n=9, sigma=sigma)
    noise = out[1:] - img
    assert abs(noise.mean()) < 0.01 * max(sigma, 0.1)
    np.testing.assert_allclose(noise.std(axis=(0, 2, 3)), sigma, rtol=0.02)


@pytest.mark.parametrize("sigma", [0.02, 0.1])
def test_pixel_noise_std_is_sigma_over_std_per_channel(sigma: float) -> None:
    img = _image((3, 64, 64))
    out = _copies(img, n=9, sigma=sigma, unit="pixel")
    noise = out[1:] - img
    expect = sigma / np.asarray(CLIP_STD)
    np.testing.assert_allclose(noise.std(axis=(0, 2, 3)), expect, rtol=0.02)
    # Back in [0, 1] pixel space the noise std is sigma on every channel.
    pixel_noise = noise * np.asarray(CLIP_STD)[None, :, None, None]
    np.testing.assert_allclose(pixel_noise.std(axis=(0, 2, 3)), sigma, rtol=0.02)


def test_pixel_sigma_conversion() -> None:
    np.testing.assert_allclose(
        pixel_sigma(0.15, "normalized", CLIP_STD), np.multiply(0.15, CLIP_STD)
    )
    assert pixel_sigma(0.04, "pixel", CLIP_STD) == (0.04, 0.04, 0.04)
    # The paper's default: 0.15 normalised is about 0.04 in [0, 1] pixel units for CLIP.
    assert all(0.038 < s < 0.042 for s in pixel_sigma(0.15, "normalized", CLIP_STD))


@settings(max_examples=20, deadline=None)
@given(sigma=st.floats(0.0, 1.0), unit=st.sampled_from(["normalized", "pixel"]))
def test_clip_bounds(sigma: float, unit: str) -> None:
    img = _image((2, 3, 8, 8))
    out = _copies(img, n=5, sigma=sigma, unit=unit, clip=True)
    lo = ((0.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)).astype(np.float32)
    hi = ((1.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)).astype(np.float32)
    noisy = out[:, 1:]
    assert np.all(noisy >= lo[:, None, None]) and np.all(noisy <= hi[:, None, None])
    # Clipped copies are still valid images once de-normalised.
    pix = noisy * np.asarray(CLIP_STD)[:, None, None] + np.asarray(CLIP_MEAN)[:, None, None]
    assert pix.min() >= -1e-5 and pix.max() <= 1 + 1e-5


def test_clipping_actually_happens_at_large_sigma() -> None:
    img = _image((3, 16, 16))
    hi = ((1.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)).astype(np.float32)
    out = _copies(img, n=4, sigma=1.0, clip=True)
    assert np.any(out[1:] == hi[:, None, None])


def test_sigma_zero_copies_equal_original() -> None:
    img = _image((3, 5, 5))
    out = _copies(img, n=4, sigma=0.0, clip=True)
    np.testing.assert_allclose(out, np.broadcast_to(img, out.shape), atol=1e-6)


def test_seeded_is_reproducible_and_seeds_differ() -> None:
    img = _image((3, 8, 8))
    a = _copies(img, seed=123)
    b = _copies(img, seed=123)
    c = _copies(img, seed=124)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[1:], c[1:])


def test_unseeded_calls_differ() -> None:
    img = _image((3, 8, 8))
    a = _copies(img, seed=None)
    b = _copies(img, seed=None)
    assert not np.array_equal(a[1:], b[1:])
    assert make_rng(np, None).integers(1 << 62) != make_rng(np, None).integers(1 << 62)


def test_unseeded_cupy_generator_gets_os_entropy() -> None:
    """CuPy path without a GPU: a stand-in module records the seed it is given."""
    fake = types.SimpleNamespace(random=types.SimpleNamespace(default_rng=lambda seed: seed))
    seeds = {make_rng(fake, None) for _ in range(4)}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)
    assert make_rng(fake, 5) == 5


def test_batched_noise_is_independent_across_requests() -> None:
    img = np.stack([_image((3, 8, 8))] * 2)
    out = _copies(img, n=3)
    assert not np.array_equal(out[0, 1:], out[1, 1:])


def test_does_not_modify_input() -> None:
    img = _image((3, 8, 8))
    keep = img.copy()
    _copies(img, n=4, clip=True, sigma=1.0)
    np.testing.assert_array_equal(img, keep)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"sigma": -0.1}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"unit": "bogus"}, "unit"),
        ({"std": (1.0, 0.0, 1.0)}, "std"),
        ({"mean": (0.5, 0.5)}, "channel"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {
        "num_samples": 4,
        "sigma": 0.1,
        "unit": "normalized",
        "clip": True,
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
        "rng": make_rng(np, 0),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        noisy_copies(_image((3, 4, 4)), **args)


def test_rejects_negative_seed() -> None:
    with pytest.raises(ValueError, match="seed"):
        make_rng(np, -1)


@pytest.mark.parametrize("unit", ["normalized", "pixel"])
def test_value_bound_holds_every_unclipped_copy_and_nothing_absurd(unit: str) -> None:
    """What steps fed by callers accept: every copy the noise step can make (here without
    clipping, at the largest sigma), and nothing like 1e30."""
    bound = noise_value_bound(CLIP_MEAN, CLIP_STD, sigma_max=1.0, unit=unit)
    lo = [(0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]
    hi = [(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]
    x = np.stack([np.full((32, 32), v, np.float32) for v in hi])  # the brightest image
    out = noisy_copies(
        x, num_samples=64, sigma=1.0, unit=unit, clip=False, mean=CLIP_MEAN, std=CLIP_STD,
        rng=make_rng(np, 0),
    )  # fmt: skip
    assert np.abs(out).max() < bound
    assert max(abs(v) for v in lo + hi) < bound < 100
