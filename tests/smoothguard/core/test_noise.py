"""Noisy copies: copy 0 exact, noise of the right size in the right units, valid pixels."""

from __future__ import annotations

import hashlib
import itertools
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothguard.core import audio
from smoothguard.core.noise import (
    CopyStream,
    gaussian_copies,
    make_rng,
    noise_value_bound,
    noisy_copies,
    pixel_sigma,
)

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


# ---------------------------------------------------------------- one implementation, same draws

# sha256 (first 32 hex digits) of the copies made before image and audio noise shared
# gaussian_copies: stored evaluation results depend on seeded copies, so they must not move by
# a single bit. Inputs come from the seeded Generator and arithmetic only (no sin/exp), so the
# digests do not depend on the platform's math library.
SEEDED_IMAGE_DIGESTS = {
    # (shape, copies, sigma, unit, clip, seed): digest
    ((3, 16, 16), 6, 0.15, "normalized", True, 1): "d9d0a1d6584c98551937b1247bbde7b3",
    ((3, 16, 16), 5, 0.1, "pixel", False, 2): "305040908bf6753789fb37152a58fa80",
    ((3, 8, 8), 4, 3.0, "normalized", True, 3): "e87e0ce6c2a55b01a96ef07a6923d0a7",
    ((2, 3, 8, 8), 3, 0.2, "pixel", True, 4): "a892a0cd87a69897ae812c3c77078761",
    ((3, 8, 8), 1, 0.2, "pixel", True, 5): "50e362e5f44edfe4b86aeaed1668d8fb",
}
SEEDED_AUDIO_DIGESTS = {
    # (samples, amplitude of each clip (0: silence), copies, sigma, unit, clip, seed): digest
    (16000, (0.3,), 6, 0.25, "relative", True, 1): "16fb7a1fb10579625a9dca90fea1d613",
    (4000, (0.3,), 5, 1.0, "relative", False, 2): "2c92ff23f5593c73e78a23c3fe1683ac",
    (4000, (0.95,), 4, 0.5, "absolute", True, 3): "41886b80b05cffbbf84141b922892387",
    (2000, (0.0,), 3, 0.5, "relative", True, 4): "7566beed64e4a0070e1f62deb03fbd04",
    (3000, (0.1, 0.8), 4, 0.3, "relative", True, 5): "3b34c0300e72eb79ae131ff555404a02",
    (1000, (0.1, 0.8), 3, 0.05, "absolute", False, 6): "e931702b15739b35cce7de40faf12e03",
    (1000, (0.3,), 1, 0.3, "relative", True, 7): "3dbdfbb5208b74ebad181bac74e40a15",
}


def _waveform(t: int, amplitude: float, seed: int = 0) -> np.ndarray:
    uniform = np.random.default_rng(seed).uniform(size=t)
    return (amplitude * (2.0 * uniform - 1.0)).astype(np.float32)


def _clips(t: int, amplitudes: tuple[float, ...]) -> np.ndarray:
    """One clip [T], or a batch [B, T]; clip i drawn with seed i."""
    clips = [
        _waveform(t, a, seed) if a else np.zeros(t, np.float32) for seed, a in enumerate(amplitudes)
    ]
    return clips[0] if len(clips) == 1 else np.stack(clips)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:32]


@pytest.mark.parametrize(("case", "expected"), SEEDED_IMAGE_DIGESTS.items())
def test_seeded_image_copies_are_bit_identical_to_before(case: tuple, expected: str) -> None:
    shape, n, sigma, unit, clip, seed = case
    out = noisy_copies(
        _image(shape), num_samples=n, sigma=sigma, unit=unit, clip=clip, mean=CLIP_MEAN,
        std=CLIP_STD, rng=make_rng(np, seed),
    )  # fmt: skip
    assert out.shape == (*shape[:-3], n, *shape[-3:]) and out.dtype == np.float32
    assert _digest(out) == expected


@pytest.mark.parametrize(("case", "expected"), SEEDED_AUDIO_DIGESTS.items())
def test_seeded_audio_copies_are_bit_identical_to_before(case: tuple, expected: str) -> None:
    t, amplitudes, n, sigma, unit, clip, seed = case
    x = _clips(t, amplitudes)
    out = audio.noisy_copies(
        x, num_samples=n, sigma=sigma, unit=unit, clip=clip, rng=make_rng(np, seed)
    )
    assert out.shape == (*x.shape[:-1], n, t) and out.dtype == np.float32
    assert _digest(out) == expected


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(1, 64),
    n=st.integers(1, 6),
    sigma=st.floats(0.0, 2.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_audio_and_image_noise_are_the_same_draws(t: int, n: int, sigma: float, seed: int) -> None:
    """Audio noise in absolute units is image noise on a one-channel, one-row image with mean 0
    and std 1 (its normalised space is its pixel space), bit for bit: one implementation."""
    x = _waveform(t, 0.5, seed % 1000)
    sound = audio.noisy_copies(
        x, num_samples=n, sigma=sigma, unit="absolute", clip=False, rng=make_rng(np, seed)
    )
    image = noisy_copies(
        x[None, None], num_samples=n, sigma=sigma, unit="pixel", clip=False, mean=(0.0,),
        std=(1.0,), rng=make_rng(np, seed),
    )  # fmt: skip
    assert sound.tobytes() == image.reshape(n, t).tobytes()


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    item=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    n=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_gaussian_copies_draw_in_order_and_keep_copy_zero(
    lead: list[int], item: list[int], n: int, seed: int
) -> None:
    """The copies are x + std * the Generator's next standard normals, in C order, whatever the
    layout (a batched output's noisy part is not contiguous and takes the other draw path)."""
    x = np.random.default_rng(seed).normal(size=(*lead, *item)).astype(np.float32)
    out = gaussian_copies(x, num_samples=n, std=np.float32(0.5), rng=make_rng(np, seed),
                          item_ndim=len(item))  # fmt: skip
    assert out.shape == (*lead, n, *item) and out.dtype == np.float32
    at = len(lead)
    np.testing.assert_array_equal(np.take(out, 0, axis=at), x)
    draws = make_rng(np, seed).standard_normal((*lead, n - 1, *item), dtype=np.float32)
    expected = draws * np.float32(0.5) + np.expand_dims(x, at)
    np.testing.assert_array_equal(np.take(out, range(1, n), axis=at), expected)


def test_gaussian_copies_reject_no_copies() -> None:
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        gaussian_copies(np.zeros(3, np.float32), num_samples=0, std=1.0, rng=make_rng(np, 0),
                        item_ndim=1)  # fmt: skip


def test_the_denoisers_pixel_level_is_the_rms_of_the_channel_stds() -> None:
    from smoothguard.core.noise import pixel_noise_level

    assert pixel_noise_level(0.25, "pixel", (0.2, 0.3, 0.4)) == 0.25
    expected = 0.5 * np.sqrt((0.2**2 + 0.3**2 + 0.4**2) / 3)
    assert pixel_noise_level(0.5, "normalized", (0.2, 0.3, 0.4)) == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(
    num_samples=st.integers(1, 12),
    cuts=st.lists(st.integers(0, 12), max_size=4),
    seed=st.integers(0, 2**63 - 1),
    sigma=st.sampled_from([0.0, 0.15, 0.5, 2.0]),
    unit=st.sampled_from(["normalized", "pixel"]),
    clip=st.booleans(),
)
def test_copy_stream_rounds_are_the_copies_drawn_at_once(
    num_samples: int, cuts: list[int], seed: int, sigma: float, unit: str, clip: bool
) -> None:
    """Drawn round by round (adaptive sampling) or at once (the ensemble's noise step): the
    same copies, bit for bit, so a seed means one thing on every path."""
    image = _image((3, 5, 7))
    kwargs = dict(sigma=sigma, unit=unit, clip=clip, mean=CLIP_MEAN, std=CLIP_STD)
    whole = noisy_copies(image, num_samples=num_samples, rng=make_rng(np, seed), **kwargs)
    stream = CopyStream(image, num_samples=num_samples, rng=make_rng(np, seed), **kwargs)
    bounds = sorted({0, num_samples, *(c for c in cuts if c <= num_samples)})
    rounds = [stream.take(range(lo, hi)) for lo, hi in itertools.pairwise(bounds)]
    np.testing.assert_array_equal(np.concatenate(rounds), whole)


def test_copy_stream_refuses_rounds_out_of_order() -> None:
    stream = CopyStream(
        _image((3, 4, 4)),
        num_samples=6,
        sigma=0.1,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        rng=make_rng(np, 1),
    )
    with pytest.raises(ValueError, match="next are 0"):
        stream.take(range(1, 3))
    stream.take(range(0, 3))
    with pytest.raises(ValueError, match="next are 3"):
        stream.take(range(0, 3))
    with pytest.raises(ValueError, match="next are 3"):
        stream.take(range(3, 7))
    assert stream.take(range(3, 6)).shape == (3, 3, 4, 4)


@pytest.mark.parametrize("start", [1, 4, 10])
def test_a_seeded_stream_replayed_past_a_first_round_gives_the_rest(start: int) -> None:
    """generate's second round after the noise step shipped the first: the same copies."""
    image = _image((3, 4, 4))
    kwargs = dict(num_samples=10, sigma=0.3, mean=CLIP_MEAN, std=CLIP_STD)
    whole = noisy_copies(image, rng=make_rng(np, 5), **kwargs)
    stream = CopyStream(image, rng=make_rng(np, 5), **kwargs)
    stream.skip_to(start, replay=True)
    np.testing.assert_array_equal(stream.take(range(start, 10)), whole[start:])


def test_an_unseeded_stream_skips_without_drawing() -> None:
    stream = CopyStream(
        _image((3, 4, 4)),
        num_samples=10,
        sigma=0.3,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        rng=make_rng(np, None),
    )
    stream.skip_to(4, replay=False)
    assert stream.take(range(4, 10)).shape == (6, 3, 4, 4)
    with pytest.raises(ValueError, match="cannot skip"):
        stream.skip_to(2, replay=False)
