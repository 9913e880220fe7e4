"""Turn whatever audio a caller has into what smoothguard_audio accepts, failing early.

WAV files travel as their own bytes (AUDIO_BYTES; the server decodes PCM WAV and reads the
rate from the header). Arrays travel as float32 mono samples in [-1, 1] (AUDIO) with their
SAMPLE_RATE. The server does not resample: send audio at the model's rate (16 kHz for the
default SynthALM); a clip at another rate gets INVALID_ARGUMENT naming the rate it needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np

AudioLike: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray


@dataclass(frozen=True, eq=False)
class AudioPayload:
    """Exactly one of `encoded` (WAV bytes) or `array` (float32 mono [T]); `sample_rate`
    goes with `array` (None: the server's model rate)."""

    encoded: bytes | None = None
    array: np.ndarray | None = None
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        if (self.encoded is None) == (self.array is None):
            raise ValueError("AudioPayload needs exactly one of encoded or array")
        if self.encoded is not None and self.sample_rate is not None:
            raise ValueError("a WAV file carries its own sample rate; pass sample_rate=None")


def is_wav(data: bytes) -> bool:
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def check_audio_array(array: np.ndarray) -> np.ndarray:
    """float32 mono [T] (or [1, T]), finite; other float dtypes are converted, not guessed."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"audio array must be a numpy.ndarray, got {type(array).__name__}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"audio array must be floating point samples in [-1, 1], got {array.dtype}; "
            "for 16-bit PCM divide by 32768"
        )
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise ValueError(f"audio array must be mono with shape [T], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError("audio array is empty")
    if not np.isfinite(array).all():
        raise ValueError("audio array contains NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def _from_bytes(data: bytes, where: str) -> AudioPayload:
    if not data:
        raise ValueError(f"{where} is empty")
    if not is_wav(data):
        raise ValueError(f"{where} is not a WAV file (no RIFF/WAVE header)")
    return AudioPayload(encoded=data)


def load_audio(audio: AudioLike, sample_rate: int | None = None) -> AudioPayload:
    """Accept a WAV file path, WAV bytes, or a float mono array (with its sample_rate)."""
    if isinstance(audio, AudioPayload):
        return audio
    if isinstance(audio, np.ndarray):
        if sample_rate is not None and (isinstance(sample_rate, bool) or int(sample_rate) <= 0):
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        rate = None if sample_rate is None else int(sample_rate)
        return AudioPayload(array=check_audio_array(audio), sample_rate=rate)
    if sample_rate is not None:
        raise ValueError("sample_rate goes with an array; a WAV file carries its own")
    if isinstance(audio, str | os.PathLike):
        path = Path(audio)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"audio file not found: {path}") from None
        return _from_bytes(data, str(path))
    if isinstance(audio, bytes | bytearray | memoryview):
        return _from_bytes(bytes(audio), "audio bytes")
    raise TypeError(
        "audio must be a WAV path, WAV bytes or a float32 mono numpy array, "
        f"got {type(audio).__name__}"
    )
