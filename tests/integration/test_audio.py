"""The audio endpoint (smoothguard_audio) end to end: WAV files and raw samples through the
real server, the client and the command line; bad audio gets INVALID_ARGUMENT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from smoothguard.core.audio import write_wav
from smoothguard.synthetic.synthaudio import load_benchmark, score_yes_no
from smoothguard_client import SmoothGuardClient, SmoothGuardError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def items() -> list[Any]:
    """Balanced yes/no questions on SynthAudio test clips (the model's own benchmark)."""
    return load_benchmark("test", 6, 0, 0)["pope"]


@pytest.fixture(scope="module")
def wav(items: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "clip.wav"
    path.write_bytes(write_wav(items[0].waveform))
    return path


def test_wav_file_gets_a_defended_answer_with_evidence(
    triton: Any, items: list[Any], wav: Path
) -> None:
    item = items[0]
    with SmoothGuardClient(triton.grpc_url) as client:
        answer = client.ask_audio(wav, item.prompt, num_samples=6, seed=3, return_candidates=True)
    assert answer.model == "smoothguard_audio"
    assert score_yes_no(answer.text, item.answer), (answer.text, item.answer)
    assert answer.decision == "answered"
    assert len(answer.candidates) == 6 and sum(answer.cluster_sizes) == 6
    assert answer.num_samples_used == 6 and 0.5 <= answer.agreement <= 1.0
    assert answer.candidates[answer.chosen_index] == answer.text


def test_samples_and_wav_agree_and_seed_reproduces(triton: Any, items: list[Any]) -> None:
    """Same clip as float32 samples and as 16-bit WAV: same clean answer; a seed fixes the noise."""
    with SmoothGuardClient(triton.grpc_url) as client:
        correct = 0
        for item in items:
            raw = client.ask_audio(item.waveform, item.prompt, sample_rate=16000, seed=11)
            again = client.ask_audio(item.waveform, item.prompt, sample_rate=16000, seed=11)
            assert (raw.text, raw.cluster_sizes) == (again.text, again.cluster_sizes)
            via_wav = client.ask_audio(write_wav(item.waveform), item.prompt, seed=11)
            assert via_wav.original_text == raw.original_text
            correct += score_yes_no(raw.text, item.answer)
            undefended = client.ask_undefended_audio(item.waveform, item.prompt)
            assert undefended == raw.original_text
    assert correct >= len(items) - 1, f"{correct}/{len(items)} defended answers correct"


def _infer(url: str, model: str, inputs: list[tuple[str, np.ndarray, str]]) -> Any:
    tensors = []
    for name, array, wire in inputs:
        tensor = grpcclient.InferInput(name, list(array.shape), wire)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        return client.infer(model, tensors)


PROMPT = ("PROMPT", np.array([b"Is there a rising chirp?"], dtype=np.object_), "BYTES")
CLIP = np.zeros(16000, np.float32)
CLIP[::50] = 0.2
NAN_CLIP = CLIP.copy()
NAN_CLIP[7] = np.nan
HUGE_CLIP = CLIP.copy()
HUGE_CLIP[7] = 1e30  # was accepted, with evidence that did not add up


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([("AUDIO", NAN_CLIP, "FP32"), PROMPT], "NaN"),
        ([("AUDIO", HUGE_CLIP, "FP32"), PROMPT], "full scale"),
        ([("AUDIO", CLIP, "FP32")], "input PROMPT is required"),
        (
            [
                ("AUDIO", CLIP, "FP32"),
                ("SAMPLE_RATE", np.array([44100], np.int32), "INT32"),
                PROMPT,
            ],
            "16000 Hz",
        ),
        ([("AUDIO", np.zeros(16000 * 31, np.float32), "FP32"), PROMPT], "over the limit"),
        ([("AUDIO", np.zeros(0, np.float32), "FP32"), PROMPT], "empty"),
        (
            [
                ("AUDIO_BYTES", np.array([b"RIFF\x00\x00\x00\x00WAVEjunk"], np.object_), "BYTES"),
                PROMPT,
            ],
            "WAV",
        ),
        ([PROMPT], "exactly one of AUDIO"),
        (
            [("AUDIO", CLIP, "FP32"), ("SIGMA", np.array([5.0], np.float32), "FP32"), PROMPT],
            "SIGMA",
        ),
    ],
    ids=[
        "nan",
        "huge",
        "no-prompt",
        "wrong-rate",
        "too-long",
        "empty",
        "bad-wav",
        "no-audio",
        "sigma-over-max",
    ],
)
def test_bad_audio_is_invalid_argument(triton: Any, inputs: list[Any], words: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        _infer(triton.grpc_url, "smoothguard_audio", inputs)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    assert words in info.value.message(), info.value.message()


@pytest.mark.parametrize("model", ["mllm_audio", "smoothguard_audio"])
def test_a_wav_cut_off_mid_sample_is_answered(triton: Any, model: str) -> None:
    """Found by the fuzzer: a data chunk ending mid-sample failed inside numpy (INTERNAL)."""
    cut = np.array([write_wav(CLIP)[:-1]], np.object_)
    prompt = PROMPT[1]
    if model == "mllm_audio":  # the bare model is batched: [B, 1] rows
        cut, prompt = cut.reshape(1, 1), prompt.reshape(1, 1)
    inputs = [("AUDIO_BYTES", cut, "BYTES"), ("PROMPT", prompt, "BYTES")]
    result = _infer(triton.grpc_url, model, inputs)
    assert result.as_numpy("TEXT").reshape(-1)[0]


def test_wrong_dtype_is_rejected_and_server_stays_up(triton: Any, items: list[Any]) -> None:
    wrong = [("AUDIO", CLIP.astype(np.float64), "FP64"), PROMPT]
    with pytest.raises(InferenceServerException) as info:
        _infer(triton.grpc_url, "smoothguard_audio", wrong)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    with SmoothGuardClient(triton.grpc_url) as client:
        answer = client.ask_audio(items[1].waveform, items[1].prompt, num_samples=3)
    assert answer.num_samples_used == 3


def _cli(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "smoothguard_client.cli", "ask", *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cli_ask_audio(triton: Any, items: list[Any], wav: Path) -> None:
    common = ("--audio", str(wav), "--prompt", items[0].prompt, "--url", triton.grpc_url)
    answer = _cli(*common, "-n", "4", "--seed", "1")
    assert answer["model"] == "smoothguard_audio" and answer["num_samples_used"] == 4
    assert score_yes_no(answer["text"], items[0].answer)
    assert _cli(*common, "--undefended")["model"] == "mllm_audio"


def test_client_rejects_non_wav_before_sending(triton: Any, tmp_path: Path) -> None:
    path = tmp_path / "clip.mp3"
    path.write_bytes(b"ID3\x03\x00 not a wav")
    with SmoothGuardClient(triton.grpc_url) as client, pytest.raises(ValueError, match="WAV"):
        client.ask_audio(path, "Is there a chirp?")
    with SmoothGuardClient(triton.grpc_url) as client, pytest.raises(SmoothGuardError):
        client.ask_audio(CLIP, "Is there a chirp?", sample_rate=8000)


def test_generate_audio_checks_the_copies_a_caller_sends(triton: Any) -> None:
    """The audio twin of generate is public too: rows, window and amplitudes are checked."""
    noisy = _infer(triton.grpc_url, "noise_audio", [("AUDIO", CLIP, "FP32"), PROMPT])
    copies = noisy.as_numpy("AUDIO_VALUES")
    options = noisy.as_numpy("OPTIONS")
    assert copies.shape == (10, 16000)

    def refused(audio: np.ndarray) -> str:
        inputs = [("AUDIO", audio, "FP32"), PROMPT, ("OPTIONS", options, "BYTES")]
        with pytest.raises(InferenceServerException) as info:
            _infer(triton.grpc_url, "generate_audio", inputs)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
        return info.value.message()

    assert "AUDIO must have shape [N, 16000]" in refused(copies[:, :8000].copy())
    assert "magnitude 1e+30" in refused(np.where(copies > 0, 1e30, copies).astype(np.float32))
    assert "OPTIONS num_samples is 10" in refused(np.repeat(copies, 6, axis=0))
