"""The first step of the audio endpoint: what it refuses, and the OPTIONS it hands on."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from smoothguard.core.settings import DefenseSettings, RequestOptions

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS = {"audio_mllm_path": str(REPO_ROOT / "models" / "synthalm"), "device": "cpu"}
CLIP = (np.sin(np.arange(16000) / 5) * 0.3).astype(np.float32)
PROMPT = np.array([b"Is there a chirp?"], np.object_)


@pytest.fixture
def noise_audio(load_model: Any, pb_utils: ModuleType) -> Any:
    model = load_model("audio/noise_audio").TritonPythonModel()
    model.initialize(pb_utils.model_args(DefenseSettings().to_parameters() | PARAMS))
    return model


def run(model: Any, pb: ModuleType, **inputs: np.ndarray) -> Any:
    (response,) = model.execute([pb.Request(**inputs)])
    return response


def test_options_carry_the_ensemble_ticket(noise_audio: Any, pb_utils: ModuleType) -> None:
    response = run(
        noise_audio,
        pb_utils,
        AUDIO=CLIP,
        PROMPT=PROMPT,
        NUM_SAMPLES=np.array([3], np.int32),
    )
    assert not response.has_error(), response.error().message()
    assert response.output("AUDIO_VALUES").shape == (3, 16000)
    written = json.loads(response.output("OPTIONS")[0])
    ticket = written.pop("ticket")
    options = RequestOptions(**written)
    assert options.num_samples == 3
    assert noise_audio.tickets.verify(options, ticket)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"AUDIO": CLIP}, "input PROMPT is required but was not sent"),
        (
            {"AUDIO": np.where(CLIP > 0, 1e30, CLIP).astype(np.float32), "PROMPT": PROMPT},
            "AUDIO must lie in [-1, 1] (full scale), got a peak of 1e+30",
        ),
        ({"AUDIO": CLIP * 4, "PROMPT": PROMPT}, "got a peak of 1.2"),
    ],
    ids=["no-prompt", "huge", "too-loud"],
)
def test_refusals_name_the_input(
    noise_audio: Any, pb_utils: ModuleType, inputs: dict[str, np.ndarray], message: str
) -> None:
    response = run(noise_audio, pb_utils, **inputs)
    assert response.has_error()
    assert response.error().code() == pb_utils.TritonError.INVALID_ARG
    assert message in response.error().message(), response.error().message()
