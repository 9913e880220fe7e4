"""Audio inputs for SmoothGuard: waveform checks, WAV decoding, and Gaussian copies.

Units. A waveform is float32 mono in [-1, 1] (full scale). Unlike pixels, audio has no fixed
brightness: the same sound can arrive 20 dB quieter. A fixed noise std would drown quiet clips
and barely touch loud ones, so the default unit is ``"relative"``: the noise std of a clip is
``sigma * max(RMS(clip), rms_floor)``, i.e. every noisy copy has a signal-to-noise ratio of
``-20 log10(sigma)`` dB (sigma 0.25 -> 12 dB, 0.5 -> 6 dB, 1.0 -> 0 dB) whatever the level.
The floor (default 1e-3, -60 dBFS) keeps digital silence from getting no noise at all.
``unit="absolute"`` states sigma in full-scale amplitude instead.

The noise math is array-module generic (NumPy on CPU, CuPy on GPU, like smoothguard.core.noise),
so the served noise step can call `noisy_copies` on a device array unchanged.
"""

from __future__ import annotations

import io
import json
import math
import os
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoothguard.core.noise import gaussian_copies
from smoothguard.core.settings import AUDIO_NOISE_UNITS, AudioNoiseUnit, InvalidRequest
from smoothguard.core.xp import array_module

DEFAULT_SAMPLE_RATE = 16_000
DEFAULT_MAX_SECONDS = 30.0
DEFAULT_RMS_FLOOR = 1e-3
# Full scale: a waveform's samples lie in [-FULL_SCALE, FULL_SCALE]. Every decoder here yields
# that range and noisy copies are clipped to it, so a louder clean copy would be heard louder
# than its own noisy copies; and amplitudes like 1e30 overflow the RMS that scales the noise.
FULL_SCALE = 1.0
# As smoothguard.core.noise.NOISE_TAILS: how many noise deviations past full scale a copy may go.
NOISE_TAILS = 10.0


def check_waveform(
    waveform: Any,
    *,
    sample_rate: int,
    expected_rate: int = DEFAULT_SAMPLE_RATE,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    name: str = "AUDIO",
    max_abs: float = FULL_SCALE,
) -> np.ndarray:
    """Accept float32 mono [T] (or [1, T]) at the model's rate, finite, within full scale
    ([-1, 1]; `max_abs` for a model fed noisy copies) and the length limit.

    Resampling is the client's job: silently resampling would change what the model hears,
    and the error message tells the caller exactly what to send. So is normalising the level:
    a clip past full scale is refused rather than clipped, as clipping would change it too.
    """
    array = np.asarray(waveform)
    if array.dtype != np.float32:
        raise InvalidRequest(f"{name} must be float32, got {array.dtype}")
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise InvalidRequest(f"{name} must be mono with shape [T], got {list(array.shape)}")
    if int(sample_rate) != int(expected_rate):
        raise InvalidRequest(f"{name} sample rate must be {expected_rate} Hz, got {sample_rate}")
    if array.shape[0] == 0:
        raise InvalidRequest(f"{name} is empty")
    limit = int(max_seconds * expected_rate)
    if array.shape[0] > limit:
        raise InvalidRequest(
            f"{name} has {array.shape[0]} samples ({array.shape[0] / expected_rate:.2f} s), "
            f"over the limit of {limit} ({max_seconds} s)"
        )
    peak = float(np.max(np.abs(array)))  # NaN and inf propagate
    if not math.isfinite(peak):
        raise InvalidRequest(f"{name} contains NaN or infinite values")
    if peak > max_abs:
        raise InvalidRequest(
            f"{name} must lie in [-{max_abs:g}, {max_abs:g}]"
            f"{' (full scale)' if max_abs == FULL_SCALE else ''}, got a peak of {peak:.3g}"
        )
    return array


def audio_value_bound(sigma_max: float) -> float:
    """The largest |sample| a noisy copy from `noisy_copies` can reasonably hold: full scale
    plus NOISE_TAILS x the largest noise std (sigma_max x an RMS of at most full scale, or
    sigma_max itself in absolute units). Steps that take copies from a caller refuse more."""
    return FULL_SCALE + NOISE_TAILS * float(sigma_max) * FULL_SCALE


def read_wav(
    source: bytes | str | os.PathLike[str], *, max_bytes: int = 16 * 1024 * 1024
) -> tuple[np.ndarray, int]:
    """PCM WAV (8/16/24/32-bit integer, any channel count) -> (float32 mono [T], rate).

    Standard library only (`wave`), so the CPU profile needs no audio package; channels are
    averaged to mono. Compressed or float WAVs are rejected with a clear message.
    """
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    else:
        with open(source, "rb") as handle:
            data = handle.read(max_bytes + 1)
    if len(data) == 0:
        raise InvalidRequest("AUDIO_BYTES is empty")
    if len(data) > max_bytes:
        raise InvalidRequest(f"AUDIO_BYTES is over the limit of {max_bytes} bytes")
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            channels, width = reader.getnchannels(), reader.getsampwidth()
            rate, frames = reader.getframerate(), reader.getnframes()
            raw = reader.readframes(frames)
    except (wave.Error, EOFError) as exc:
        reason = str(exc) or "the data ends inside the WAV header"
        raise InvalidRequest(f"AUDIO_BYTES could not be decoded as PCM WAV: {reason}") from exc
    except Exception as exc:  # hostile headers reach `wave`/`struct`: the caller's bad input
        raise InvalidRequest(
            f"AUDIO_BYTES could not be decoded as PCM WAV: {type(exc).__name__}: {exc}"
        ) from exc
    if channels < 1:
        raise InvalidRequest("AUDIO_BYTES declares no audio channels")
    if width not in (1, 2, 3, 4):
        raise InvalidRequest(f"AUDIO_BYTES has an unsupported sample width of {width} bytes")
    # A data chunk cut off mid-sample (a truncated upload, or a header that overstates it) keeps
    # its whole samples, as a partial last frame keeps its whole channels below.
    raw = raw[: len(raw) - len(raw) % width]
    if width == 1:  # 8-bit WAV is unsigned
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        samples = value.astype(np.float32) / float(1 << 23)
    else:
        samples = (np.frombuffer(raw, "<i4").astype(np.float64) / 2.0**31).astype(np.float32)
    usable = (samples.shape[0] // channels) * channels
    mono = samples[:usable].reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def audio_from_inputs(
    audio: np.ndarray | None,
    audio_bytes: np.ndarray | None,
    sample_rate: np.ndarray | None,
    *,
    max_bytes: int,
) -> tuple[np.ndarray, int | None]:
    """Exactly one of AUDIO (float32 [T], at SAMPLE_RATE) or AUDIO_BYTES (a PCM WAV file).

    Returns the mono waveform and its rate (None: AUDIO sent without SAMPLE_RATE, meaning the
    model's own rate); AudioPreprocessor then checks rate, length and values.
    """
    if (audio is None) == (audio_bytes is None):
        raise InvalidRequest("send exactly one of AUDIO (float32 [T]) or AUDIO_BYTES (PCM WAV)")
    if audio_bytes is not None:
        if sample_rate is not None:
            raise InvalidRequest("SAMPLE_RATE goes with AUDIO; a WAV file carries its own rate")
        if audio_bytes.size != 1:
            raise InvalidRequest(
                f"AUDIO_BYTES must hold one WAV file, got shape {list(audio_bytes.shape)}"
            )
        raw = audio_bytes.reshape(-1)[0]
        if not isinstance(raw, bytes | np.bytes_):
            raise InvalidRequest("AUDIO_BYTES must be bytes")
        return read_wav(bytes(raw), max_bytes=max_bytes)
    assert audio is not None
    if sample_rate is None:
        return audio, None
    if sample_rate.size != 1 or not np.issubdtype(sample_rate.dtype, np.integer):
        raise InvalidRequest(
            f"SAMPLE_RATE must be one integer, got {sample_rate.dtype} {list(sample_rate.shape)}"
        )
    return audio, int(sample_rate.reshape(-1)[0])


def write_wav(waveform: np.ndarray, sample_rate: int = DEFAULT_SAMPLE_RATE) -> bytes:
    """float32 mono in [-1, 1] -> 16-bit PCM WAV bytes (for clients, fixtures and reports)."""
    pcm = (np.clip(np.asarray(waveform, np.float32), -1, 1) * 32767).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(int(sample_rate))
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()


@dataclass(frozen=True)
class AudioPreprocessor:
    """The audio model's input window, without loading the model.

    The noise step must add noise to exactly the waveform the model will hear: the clip at
    the model's rate, zero-padded or cut to its feature extractor's window (Whisper-style),
    so the RMS that scales the noise is the RMS of that window. Reading only the processor
    config keeps the noise step light (no weights, no torch).
    """

    sample_rate: int
    window: int  # samples the model hears; longer clips are cut, shorter ones zero-padded
    max_seconds: float = DEFAULT_MAX_SECONDS
    # Full scale for a caller's clip; the MLLM also takes noisy copies (audio_value_bound).
    max_abs: float = FULL_SCALE

    @classmethod
    def load(
        cls, model_path: str | os.PathLike[str], *, max_seconds: float = DEFAULT_MAX_SECONDS
    ) -> AudioPreprocessor:
        path = Path(model_path) / "processor_config.json"
        if not path.is_file():
            path = Path(model_path) / "preprocessor_config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{model_path}: no readable audio processor config: {exc}") from exc
        extractor = config.get("feature_extractor", config)
        try:
            rate = int(extractor["sampling_rate"])
            window = int(extractor.get("n_samples") or rate * int(extractor["chunk_length"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: a Whisper-style feature extractor needs sampling_rate and n_samples "
                "(or chunk_length)"
            ) from exc
        return cls(rate, window, max_seconds)

    def __call__(self, waveform: Any, sample_rate: int | None = None) -> np.ndarray:
        """A request's clip -> float32 [window], after the request-level checks."""
        checked = check_waveform(
            waveform,
            sample_rate=self.sample_rate if sample_rate is None else sample_rate,
            expected_rate=self.sample_rate,
            max_seconds=self.max_seconds,
            max_abs=self.max_abs,
        )[: self.window]
        out = np.zeros(self.window, np.float32)
        out[: checked.shape[0]] = checked
        return out


def rms(waveform: Any) -> Any:
    """Root mean square over the last axis (time), keeping it for broadcasting."""
    xp = array_module(waveform)
    x = xp.asarray(waveform, dtype=xp.float32)
    return xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True))


def noise_std(
    waveform: Any,
    sigma: float,
    unit: AudioNoiseUnit = "relative",
    rms_floor: float = DEFAULT_RMS_FLOOR,
) -> Any:
    """The per-clip noise std ``[..., 1]`` that `noisy_copies` adds (see the module doc)."""
    _check(sigma, unit)
    xp = array_module(waveform)
    if unit == "absolute":
        return xp.full((*waveform.shape[:-1], 1), float(sigma), dtype=xp.float32)
    return float(sigma) * xp.maximum(rms(waveform), xp.float32(rms_floor))


def noisy_copies(
    waveform: Any,
    *,
    num_samples: int,
    sigma: float,
    rng: Any,
    unit: AudioNoiseUnit = "relative",
    clip: bool = True,
    rms_floor: float = DEFAULT_RMS_FLOOR,
) -> Any:
    """``[..., T]`` -> ``[..., N, T]`` float32; copy 0 is the input, untouched.

    The image noise (smoothguard.core.noise.gaussian_copies) with the clip's own std
    (`noise_std`): copy 0 stays exact for the same reason, the policy compares the unperturbed
    answer with the noisy consensus. `clip` keeps copies inside [-1, 1] full scale. `rng` is a
    Generator from smoothguard.core.noise.make_rng (seeded or OS entropy).
    """
    xp = array_module(waveform)
    _check(sigma, unit)
    if waveform.ndim < 1 or waveform.shape[-1] < 1:
        raise ValueError(f"waveform must be [..., T] with T >= 1, got shape {waveform.shape}")
    x = xp.asarray(waveform, dtype=xp.float32)
    std = noise_std(x, sigma, unit, rms_floor)[..., None, :]  # [..., 1, 1]
    out = gaussian_copies(x, num_samples=num_samples, std=std, rng=rng, item_ndim=1, xp=xp)
    if clip and num_samples > 1:
        noisy = out[..., 1:, :]
        xp.clip(noisy, -FULL_SCALE, FULL_SCALE, out=noisy)
    return out


def _check(sigma: float, unit: str) -> None:
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite non-negative number, got {sigma}")
    if unit not in AUDIO_NOISE_UNITS:
        raise ValueError(f"unit must be one of {AUDIO_NOISE_UNITS}, got {unit!r}")
