"""The first step of the image and audio endpoints: what it refuses, the OPTIONS it hands on."""

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


def test_audio_refuses_certify(noise_audio: Any, pb_utils: ModuleType) -> None:
    """Its config declares no CERTIFY (Triton refuses the input); were one added, the step
    still would: the certified radius is a distance between images."""
    response = run(noise_audio, pb_utils, AUDIO=CLIP, PROMPT=PROMPT, CERTIFY=np.array([True]))
    assert response.has_error()
    assert response.error().code() == pb_utils.TritonError.INVALID_ARG
    assert "smoothguard_audio has no certified mode" in response.error().message()


# ------------------------------------------------------------------ the image noise step

IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
YES_NO_PROMPT = np.array([b"Is there a red square in the image?"], np.object_)


def image_noise(load_model: Any, pb: ModuleType, settings: DefenseSettings | None = None) -> Any:
    model = load_model("noise").TritonPythonModel()
    params = (settings or DefenseSettings()).to_parameters() | {
        "mllm_path": str(REPO_ROOT / "models" / "synthvlm"),
        "device": "cpu",
    }
    model.initialize(pb.model_args(params))
    return model


def test_certify_makes_the_clean_copy_and_every_draw(load_model: Any, pb_utils: ModuleType) -> None:
    model = image_noise(load_model, pb_utils)
    response = run(
        model,
        pb_utils,
        IMAGE=IMAGE,
        PROMPT=YES_NO_PROMPT,
        SEED=np.array([5], np.int64),
        CERTIFY=np.array([True]),
        ANSWER_SET=np.array([b"Yes", b"NO"], np.object_),
    )
    assert not response.has_error(), response.error().message()
    copies = response.output("PIXEL_VALUES")
    assert copies.shape == (111, 3, 64, 64)  # 1 + 10 selection + 100 estimation
    assert np.array_equal(copies[0], model.preprocess([IMAGE])[0])  # copy 0 clean
    written = json.loads(response.output("OPTIONS")[0])
    ticket = written.pop("ticket")
    assert written["certify"] is True and written["answer_set"] == ["yes", "no"]
    options = RequestOptions.from_json(json.dumps(written))
    assert options.num_samples == 111 and options.answer_set == ("yes", "no")
    assert model.tickets.verify(options, ticket)


@pytest.mark.parametrize(
    ("inputs", "settings", "message"),
    [
        (
            {"CERTIFY": np.array([True]), "ADAPTIVE": np.array([True])},
            None,
            "ADAPTIVE cannot be combined with CERTIFY: certify needs every draw",
        ),
        (
            {"CERTIFY": np.array([True]), "NUM_SAMPLES": np.array([10], np.int32)},
            None,
            "NUM_SAMPLES must be left out with CERTIFY, or be 111",
        ),
        (
            {"CERTIFY": np.array([True])},
            DefenseSettings(allow_certify=False),
            "CERTIFY is refused by this server (allow_certify=false)",
        ),
        (
            {"ANSWER_SET": np.array([b"yes", b"no"], np.object_)},
            None,
            "ANSWER_SET is only used with CERTIFY=true",
        ),
        (
            {"CERTIFY": np.array([True]), "ANSWER_SET": np.array([b"w"] * 17, np.object_)},
            None,
            "ANSWER_SET has 17 rows, over the limit of 16",
        ),
        (
            {"CERTIFY": np.array([True]), "ANSWER_SET": np.array([b"x" * 200], np.object_)},
            None,
            "ANSWER_SET row 0 has 200 bytes, over the limit of 32 characters",
        ),
        (
            {"CERTIFY": np.array([True]), "ANSWER_SET": np.array([b"not sure"], np.object_)},
            None,
            "ANSWER_SET answers must be single words",
        ),
    ],
    ids=["adaptive", "num-samples", "turned-off", "no-certify", "many", "long", "phrase"],
)
def test_certify_refusals_name_the_input(
    load_model: Any,
    pb_utils: ModuleType,
    inputs: dict[str, np.ndarray],
    settings: DefenseSettings | None,
    message: str,
) -> None:
    model = image_noise(load_model, pb_utils, settings)
    response = run(model, pb_utils, IMAGE=IMAGE, PROMPT=YES_NO_PROMPT, **inputs)
    assert response.has_error()
    assert response.error().code() == pb_utils.TritonError.INVALID_ARG
    assert message in response.error().message(), response.error().message()


@pytest.mark.parametrize("first_round_only", [False, True])
@pytest.mark.parametrize("adaptive", [False, True])
def test_an_adaptive_request_ships_its_first_round_where_configured(
    load_model: Any, pb_utils: ModuleType, adaptive: bool, first_round_only: bool
) -> None:
    """The rest (when the first round disagrees) is generate's to draw; every other request,
    and every request where the profile ships all (GPU, a denoise step), gets all N rows."""
    model = load_model("noise").TritonPythonModel()
    params = {
        "mllm_path": str(REPO_ROOT / "models" / "synthvlm"),
        "device": "cpu",
        "adaptive_first_round_only": str(first_round_only).lower(),
    }
    model.initialize(pb_utils.model_args(DefenseSettings().to_parameters() | params))
    response = run(
        model,
        pb_utils,
        IMAGE=np.zeros((32, 32, 3), np.uint8),
        PROMPT=PROMPT,
        NUM_SAMPLES=np.array([10], np.int32),
        ADAPTIVE=np.array([adaptive]),
    )
    assert not response.has_error(), response.error().message()
    rows = 4 if adaptive and first_round_only else 10
    assert response.output("PIXEL_VALUES").shape == (rows, 3, 64, 64)
    assert json.loads(response.output("OPTIONS")[0])["num_samples"] == 10
