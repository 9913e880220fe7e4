"""Audio inputs: waveform checks, WAV round trips, and relative Gaussian copies."""

from __future__ import annotations

import io
import types
import wave
from pathlib import Path

import numpy as np
import pytest

from smoothguard.core.audio import (
    DEFAULT_RMS_FLOOR,
    audio_value_bound,
    check_waveform,
    noise_std,
    noisy_copies,
    read_wav,
    rms,
    write_wav,
)
from smoothguard.core.noise import make_rng
from smoothguard.core.settings import InvalidRequest

REPO_ROOT = Path(__file__).resolve().parents[3]


def _tone(n: int = 16000, amplitude: float = 0.3, seed: int = 0) -> np.ndarray:
    t = np.arange(n) / 16000
    noise = np.random.default_rng(seed).normal(0, 0.01, n)
    return (amplitude * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)


def test_check_waveform_accepts_mono_float32() -> None:
    wave_ = _tone()
    assert check_waveform(wave_, sample_rate=16000) is wave_
    assert check_waveform(wave_[None], sample_rate=16000).shape == (16000,)


@pytest.mark.parametrize(
    ("waveform", "rate", "message"),
    [
        (np.zeros(100, np.float64), 16000, "float32"),
        (np.zeros((2, 100), np.float32), 16000, "mono"),
        (np.zeros(100, np.float32), 44100, "sample rate"),
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.zeros(16000 * 31, np.float32), 16000, "limit"),
        (np.array([0.0, np.nan], np.float32), 16000, "NaN"),
        (np.array([0.0, np.inf], np.float32), 16000, "NaN or infinite"),
        (
            np.array([0.0, 1e30], np.float32),
            16000,
            r"\[-1, 1\] \(full scale\), got a peak of 1e\+30",
        ),
        (np.array([0.0, -1.5], np.float32), 16000, "peak of 1.5"),
    ],
)
def test_check_waveform_rejects(waveform: np.ndarray, rate: int, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_waveform(waveform, sample_rate=rate)


def test_wav_round_trip_is_within_16_bit_quantisation() -> None:
    wave_ = _tone()
    decoded, rate = read_wav(write_wav(wave_, 16000))
    assert rate == 16000 and decoded.dtype == np.float32 and decoded.shape == wave_.shape
    assert np.abs(decoded - wave_).max() <= 1 / 32767


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_decodes_pcm_widths_and_downmixes(width: int) -> None:
    left = np.linspace(-0.5, 0.5, 64)
    right = -left
    scale = float(2 ** (8 * width - 1) - 1)
    ints = np.round(np.stack([left, right], axis=1) * scale).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.reshape(-1))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(width)
        writer.setframerate(8000)
        writer.writeframes(raw)
    decoded, rate = read_wav(buffer.getvalue())
    assert rate == 8000 and decoded.shape == (64,)
    np.testing.assert_allclose(decoded, 0.0, atol=2 / 128)  # left + right cancel
    mono, _ = read_wav(write_wav(left.astype(np.float32), 8000))
    np.testing.assert_allclose(mono, left, atol=1e-4)


@pytest.mark.parametrize("width", [2, 3, 4])
def test_read_wav_keeps_the_whole_samples_of_a_cut_off_data_chunk(width: int) -> None:
    """The fuzzer's find: a WAV whose data ends mid-sample failed inside numpy (INTERNAL)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(width)
        writer.setframerate(16000)
        writer.writeframes(bytes(width * 5))
    decoded, rate = read_wav(buffer.getvalue()[:-1])  # the last sample loses a byte
    assert rate == 16000 and decoded.shape == (4,) and not decoded.any()


def test_read_wav_rejects_garbage_and_oversize(tmp_path) -> None:
    with pytest.raises(InvalidRequest, match="PCM WAV"):
        read_wav(b"RIFF....not a wav")
    with pytest.raises(InvalidRequest, match="empty"):
        read_wav(b"")
    path = tmp_path / "a.wav"
    path.write_bytes(write_wav(_tone(), 16000))
    assert read_wav(path)[0].shape == (16000,)
    with pytest.raises(InvalidRequest, match="limit"):
        read_wav(path, max_bytes=100)


def test_copy_zero_is_exact_and_noise_is_relative_to_rms() -> None:
    for amplitude in (0.02, 0.3):
        x = _tone(amplitude=amplitude)
        out = noisy_copies(x, num_samples=33, sigma=0.5, rng=make_rng(np, 0), clip=False)
        assert out.shape == (33, 16000) and out.dtype == np.float32
        np.testing.assert_array_equal(out[0], x)
        measured = (out[1:] - x).std()
        expected = 0.5 * float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        assert measured == pytest.approx(expected, rel=0.02)  # same SNR at any level


def test_absolute_unit_floor_clip_and_batches() -> None:
    x = _tone()
    out = noisy_copies(x, num_samples=5, sigma=0.01, unit="absolute", rng=make_rng(np, 1))
    assert (out[1:] - x).std() == pytest.approx(0.01, rel=0.05)
    silent = np.zeros(16000, np.float32)
    assert noise_std(silent, 0.5)[0] == pytest.approx(0.5 * DEFAULT_RMS_FLOOR)
    loud = np.ones(16000, np.float32) * 0.99
    clipped = noisy_copies(loud, num_samples=3, sigma=1.0, rng=make_rng(np, 2))
    assert clipped.max() <= 1.0 and clipped.min() >= -1.0
    batch = np.stack([_tone(amplitude=0.1), _tone(amplitude=0.4)])
    many = noisy_copies(batch, num_samples=4, sigma=0.2, rng=make_rng(np, 3), clip=False)
    assert many.shape == (2, 4, 16000)
    ratio = (many[1, 1:] - batch[1]).std() / (many[0, 1:] - batch[0]).std()
    assert ratio == pytest.approx(float(rms(batch[1])[0] / rms(batch[0])[0]), rel=0.05)


def test_seeded_copies_repeat_and_unseeded_differ() -> None:
    x = _tone()
    a = noisy_copies(x, num_samples=3, sigma=0.3, rng=make_rng(np, 7))
    b = noisy_copies(x, num_samples=3, sigma=0.3, rng=make_rng(np, 7))
    np.testing.assert_array_equal(a, b)
    c = noisy_copies(x, num_samples=3, sigma=0.3, rng=make_rng(np, None))
    assert not np.array_equal(a[1:], c[1:])
    assert noisy_copies(x, num_samples=1, sigma=0.3, rng=make_rng(np, 0)).shape == (1, 16000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"unit": "pixel"}, "unit"),
    ],
)
def test_noisy_copies_rejects_bad_settings(kwargs: dict, message: str) -> None:
    args = {"num_samples": 2, "sigma": 0.1, "rng": make_rng(np, 0), **kwargs}
    with pytest.raises(ValueError, match=message):
        noisy_copies(_tone(), **args)


class _Marked(np.ndarray):
    """An array made by the stand-in array module below."""


def _stand_in_array_module() -> types.SimpleNamespace:
    """NumPy under another name, as CuPy would be on a GPU: every array its functions return
    is _Marked, so an array the audio code made with NumPy itself comes out unmarked."""

    def marked(function: object) -> object:
        def call(*args: object, **kwargs: object) -> object:
            result = function(*args, **kwargs)  # type: ignore[operator]
            return result.view(_Marked) if isinstance(result, np.ndarray) else result

        return call

    names = ("asarray", "empty", "full", "sqrt", "mean", "maximum", "multiply", "clip")
    return types.SimpleNamespace(
        float32=np.float32, **{name: marked(getattr(np, name)) for name in names}
    )


def test_noise_follows_the_array_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module asks xp.array_module for its arrays (CuPy on GPU) instead of assuming NumPy:
    with a stand-in module, every array it returns was made by that module, from the array it
    was asked about, and holds the same numbers as with NumPy."""
    import smoothguard.core.audio as audio

    clip = _tone()
    expected = audio.noisy_copies(clip, num_samples=3, sigma=0.1, rng=make_rng(np, 0))
    expected_absolute = audio.noise_std(clip[None], 0.2, unit="absolute")
    fake = _stand_in_array_module()
    asked: list[object] = []

    def array_module(arr: object) -> types.SimpleNamespace:
        asked.append(arr)
        return fake

    monkeypatch.setattr(audio, "array_module", array_module)
    copies = audio.noisy_copies(clip, num_samples=3, sigma=0.1, rng=make_rng(np, 0))
    assert asked[0] is clip, "the array module must be the input's own"
    assert isinstance(copies, _Marked), "the copies were not made by the input's array module"
    np.testing.assert_array_equal(copies, expected)
    assert isinstance(audio.rms(clip), _Marked)
    relative = audio.noise_std(clip, 0.2)
    assert isinstance(relative, _Marked)
    np.testing.assert_allclose(relative, 0.2 * rms(clip), rtol=1e-6)
    absolute = audio.noise_std(clip[None], 0.2, unit="absolute")
    assert isinstance(absolute, _Marked)
    np.testing.assert_array_equal(absolute, expected_absolute)


def test_audio_pipeline_votes_over_noisy_waveforms() -> None:
    """The shared SmoothGuard pipeline with the audio noise step (evaluation.audio)."""
    from smoothguard.core.settings import DefenseSettings, resolve_options
    from smoothguard.evaluation.audio import AudioSmoothGuard

    seen: list[np.ndarray] = []

    def generate(copies: np.ndarray, prompt: str, n: int) -> list[str]:
        seen.append(copies)
        return ["yes"] * (len(copies) - 1) + ["no"] if len(copies) > 1 else ["no"]

    def embed(texts: list[str]) -> np.ndarray:
        return np.array([[1.0, 0.0] if t == "yes" else [0.0, 1.0] for t in texts])

    settings = DefenseSettings()
    guard = AudioSmoothGuard(generate, embed, settings=settings)
    x = _tone()
    options = resolve_options(settings, sigma=0.25, num_samples=6, seed=1)
    out = guard.defend(x, "Is there a low tone in the audio?", options)
    assert out.text == "yes" and out.num_samples_used == 6
    assert seen[0].shape == (6, 16000)
    np.testing.assert_array_equal(seen[0][0], x)
    assert (seen[0][1:] - x).std() == pytest.approx(0.25 * float(rms(x)[0]), rel=0.05)
    with pytest.raises(ValueError, match=r"\[T\]"):
        guard.defend(np.stack([x, x]), "Describe the audio.", options)


# ---------------------------------------------------------------- serving helpers


def test_preprocessor_reads_the_window_from_the_shipped_model() -> None:
    from smoothguard.core.audio import AudioPreprocessor

    fit = AudioPreprocessor.load(REPO_ROOT / "models" / "synthalm", max_seconds=2.0)
    assert (fit.sample_rate, fit.window) == (16000, 16000)
    short = fit(np.full(100, 0.5, np.float32))
    assert short.shape == (16000,) and short[:100].tolist() == [0.5] * 100 and not short[100:].any()
    long = np.arange(20000, dtype=np.float32) / 20000
    assert np.array_equal(fit(long), long[:16000])
    with pytest.raises(InvalidRequest, match="16000 Hz"):
        fit(long, 8000)
    with pytest.raises(InvalidRequest, match="over the limit"):
        fit(np.zeros(16000 * 3, np.float32))


def test_preprocessor_refuses_a_folder_without_an_audio_processor(tmp_path) -> None:
    from smoothguard.core.audio import AudioPreprocessor

    with pytest.raises(ValueError, match="audio processor"):
        AudioPreprocessor.load(tmp_path)


def test_audio_from_inputs_takes_exactly_one_source() -> None:
    from smoothguard.core.audio import audio_from_inputs, write_wav

    clip = np.zeros(160, np.float32)
    wav = np.array([write_wav(clip, 8000)], dtype=np.object_)
    rate = np.array([16000], np.int32)
    assert audio_from_inputs(clip, None, None, max_bytes=10**6)[1] is None
    assert audio_from_inputs(clip, None, rate, max_bytes=10**6)[1] == 16000
    decoded, wav_rate = audio_from_inputs(None, wav, None, max_bytes=10**6)
    assert wav_rate == 8000 and decoded.shape == (160,)
    for args, words in (
        ((None, None, None), "exactly one"),
        ((clip, wav, None), "exactly one"),
        ((None, wav, rate), "carries its own rate"),
        ((clip, None, np.array([1.5], np.float32)), "one integer"),
        ((None, np.array([b"x", b"y"], np.object_), None), "one WAV"),
    ):
        with pytest.raises(InvalidRequest, match=words):
            audio_from_inputs(*args, max_bytes=10**6)
    with pytest.raises(InvalidRequest, match="limit"):
        audio_from_inputs(None, wav, None, max_bytes=16)


def test_settings_for_audio_swap_in_the_audio_sigma() -> None:
    from smoothguard.core.settings import DefenseSettings, resolve_options

    audio = DefenseSettings(sigma=0.15, audio_sigma=0.5, audio_sigma_max=1.5).for_audio()
    assert resolve_options(audio).sigma == 0.5
    assert resolve_options(audio, sigma=1.2).sigma == 1.2  # above the image limit of 1.0
    with pytest.raises(InvalidRequest, match="SIGMA"):
        resolve_options(audio, sigma=1.6)
    with pytest.raises(ValueError, match="audio_noise_unit"):
        DefenseSettings(audio_noise_unit="decibel")  # type: ignore[arg-type]


def test_full_scale_is_accepted_and_the_bound_leaves_room_for_noise() -> None:
    edge = np.array([-1.0, 1.0, 0.0], np.float32)
    assert check_waveform(edge, sample_rate=16000) is edge
    bound = audio_value_bound(2.0)
    assert bound == 21.0
    copies = noisy_copies(
        _tone(amplitude=0.9), num_samples=16, sigma=2.0, rng=make_rng(np, 0), clip=False
    )
    assert np.abs(copies).max() < bound  # unclipped noisy copies of a loud clip stay inside
