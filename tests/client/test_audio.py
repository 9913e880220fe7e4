"""Client-side audio handling: what is sent for each kind of audio, and early errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smoothguard.core.audio import write_wav
from smoothguard_client import build_ask_audio_inputs, load_audio

CLIP = (0.1 * np.sin(np.arange(1600) / 3)).astype(np.float32)


def _by_name(inputs: list) -> dict:
    return {i.name(): i for i in inputs}


def test_wav_path_travels_as_its_own_bytes(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    path.write_bytes(write_wav(CLIP))
    inputs = _by_name(build_ask_audio_inputs(path, "Is there a chirp?", num_samples=4))
    assert set(inputs) == {"AUDIO_BYTES", "PROMPT", "NUM_SAMPLES"}
    assert inputs["AUDIO_BYTES"].shape() == [1] and inputs["AUDIO_BYTES"].datatype() == "BYTES"


def test_array_travels_as_float32_with_its_rate() -> None:
    inputs = _by_name(build_ask_audio_inputs(CLIP.astype(np.float64), "p", sample_rate=16000))
    assert inputs["AUDIO"].datatype() == "FP32" and inputs["AUDIO"].shape() == [1600]
    assert inputs["SAMPLE_RATE"].datatype() == "INT32" and inputs["SAMPLE_RATE"].shape() == [1]
    assert "SAMPLE_RATE" not in _by_name(build_ask_audio_inputs(CLIP, "p"))


@pytest.mark.parametrize(
    ("audio", "rate", "error", "words"),
    [
        (b"ID3 not a wav", None, ValueError, "not a WAV"),
        (b"", None, ValueError, "empty"),
        (np.zeros(10, np.int16), None, ValueError, "32768"),
        (np.zeros((2, 10), np.float32), None, ValueError, "mono"),
        (np.array([0.0, np.nan], np.float32), None, ValueError, "NaN"),
        (np.zeros(0, np.float32), None, ValueError, "empty"),
        (CLIP, 0, ValueError, "positive"),
        (write_wav(CLIP), 16000, ValueError, "own"),
        (3.5, None, TypeError, "WAV path"),
    ],
)
def test_bad_audio_fails_before_any_network_trip(
    audio: object, rate: int | None, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        load_audio(audio, rate)  # type: ignore[arg-type]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.wav"):
        load_audio(tmp_path / "nope.wav")
