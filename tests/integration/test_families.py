"""The paper's two model families (LLaVA-1.5, Qwen2.5-VL) served by the real tritonserver from
checkpoints built here (smoothguard.synthetic.families), pointed at with mllm.model_path as a
user would point at llava-1.5-7b-hf or Qwen2.5-VL-7B-Instruct on disk. Random weights answer
nonsense; what is checked is that every step carries the family's inputs exactly: seeded
defended answers equal the in-process pipeline's, undefended ones the adapter's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from smoothguard.synthetic.families import FAMILIES, SERVE_IMAGE_SIZE
from smoothguard.synthetic.synthpope import generate_split
from smoothguard.synthetic.synthpope.questions import pope_prompt
from smoothguard_client import SmoothGuardClient, SmoothGuardError

pytestmark = pytest.mark.integration

SEED = 77
SAMPLES = 6
TOKENS = 8


@dataclass
class Served:
    family: str
    path: Path
    image_size: int | None
    server: Any
    client: SmoothGuardClient


@pytest.fixture(scope="module", params=FAMILIES)
def served(
    request: pytest.FixtureRequest,
    family_checkpoint: Callable[[str], Path],
    start_triton: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    family = request.param
    path = family_checkpoint(family)
    size = SERVE_IMAGE_SIZE[family]
    overrides = [f"mllm.model_path={path}", f"mllm.image_size={size or 0}"]
    running = start_triton(tmp_path_factory.mktemp(f"triton-{family}"), overrides)
    try:
        with SmoothGuardClient(running.grpc_url, timeout_s=300) as client:
            yield Served(family, path, size, running, client)
    finally:
        running.server.stop()


@pytest.fixture(scope="module")
def in_process(served: Served) -> Any:
    """The same defense in this process: the adapter, the embedder, the pipeline."""
    from smoothguard.adapters.embedder import SentenceEncoder
    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.adapters.preprocess import ImagePreprocessor
    from smoothguard.core.pipeline import SmoothGuard
    from smoothguard.core.settings import DefenseSettings

    torch.set_num_threads(1)  # as the served mllm: a random model's near-ties stay put
    profile = served.server.profile
    settings = DefenseSettings.from_profile(profile["defense"])
    vlm = VisionLanguageModel.load(served.path, image_size=served.image_size)
    pre = ImagePreprocessor.load(served.path, served.image_size)
    encoder = SentenceEncoder(profile["embedder"]["model_path"])
    guard = SmoothGuard(
        lambda copies, prompt, tokens: vlm.generate(copies, prompt, max_new_tokens=tokens),
        encoder.encode,
        image_mean=pre.mean,
        image_std=pre.std,
        settings=settings,
    )
    return vlm, pre, guard, settings


def _items() -> list[tuple[np.ndarray, str]]:
    scenes = generate_split("test", 2)
    return [
        (scenes[0].image, pope_prompt(*scenes[0].objects[0])),
        (scenes[1].image, "Describe the image."),
    ]


def test_seeded_defended_answers_equal_the_in_process_pipeline(
    served: Served, in_process: Any
) -> None:
    from smoothguard.core.settings import resolve_options

    vlm, pre, guard, settings = in_process
    for index, (image, prompt) in enumerate(_items()):
        answer = served.client.ask(
            image,
            prompt,
            seed=SEED + index,
            num_samples=SAMPLES,
            max_new_tokens=TOKENS,
            return_candidates=True,
        )
        options = resolve_options(
            settings, num_samples=SAMPLES, seed=SEED + index, max_new_tokens=TOKENS
        )
        local = guard.defend(pre([image])[0], prompt, options)
        assert answer.candidates == local.candidates, served.family
        assert len(answer.candidates) == answer.num_samples_used == SAMPLES
        assert (answer.text, answer.decision, answer.reason) == (
            local.text,
            local.decision,
            local.reason,
        )
        assert answer.chosen_index == local.chosen_index
        assert answer.agreement == pytest.approx(local.agreement)
        assert answer.original_text == local.original_text == local.candidates[0]
        # the clean copy's answer is the undefended model's
        undefended = vlm.generate(vlm.preprocess([image]), prompt, max_new_tokens=TOKENS)[0]
        assert answer.original_text == undefended


def test_undefended_answers_equal_the_adapters(served: Served, in_process: Any) -> None:
    vlm = in_process[0]
    for image, prompt in _items():
        served_text = served.client.ask_undefended(image, prompt, max_new_tokens=TOKENS)
        assert served_text == vlm.generate(vlm.preprocess([image]), prompt, TOKENS)[0]


def test_noise_is_drawn_at_the_models_input_resolution(served: Served, in_process: Any) -> None:
    """The noise step's copies are [N, 3, S, S] at the family's resolution (336 for LLaVA's
    tower, mllm.image_size for Qwen2.5-VL), whatever size the image arrives at."""
    vlm = in_process[0]
    image = np.random.default_rng(0).integers(0, 256, (90, 150, 3), np.uint8)
    inputs = [
        grpcclient.InferInput("IMAGE", list(image.shape), "UINT8"),
        grpcclient.InferInput("PROMPT", [1], "BYTES"),
        grpcclient.InferInput("NUM_SAMPLES", [1], "INT32"),
    ]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(np.array([b"Describe the image."], np.object_))
    inputs[2].set_data_from_numpy(np.array([3], np.int32))
    with grpcclient.InferenceServerClient(served.server.grpc_url) as raw:
        copies = raw.infer("noise", inputs).as_numpy("PIXEL_VALUES")
    expected = (336, 336) if served.family == "llava15" else (served.image_size,) * 2
    assert copies.shape == (3, 3, *expected) == (3, 3, *vlm.image_size)


def test_pixel_values_at_another_resolution_are_refused(served: Served, in_process: Any) -> None:
    vlm = in_process[0]
    wrong = np.zeros((1, 3, vlm.image_size[0] - 28, vlm.image_size[1] - 28), np.float32)
    inputs = [
        grpcclient.InferInput("PIXEL_VALUES", list(wrong.shape), "FP32"),
        grpcclient.InferInput("PROMPT", [1, 1], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(wrong)
    inputs[1].set_data_from_numpy(np.array([[b"Describe the image."]], np.object_))
    with (
        grpcclient.InferenceServerClient(served.server.grpc_url) as raw,
        pytest.raises(InferenceServerException) as info,
    ):
        raw.infer("mllm", inputs)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "pixel_values" in info.value.message().lower()
    # and the server still answers
    assert served.client.ask_undefended(*_items()[0], max_new_tokens=2) is not None
    with pytest.raises(SmoothGuardError):
        served.client.ask(np.zeros((1, 1, 3), np.uint8), "Describe the image.")
