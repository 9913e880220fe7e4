"""mllm (model_repository/gpu/mllm_llm_api/mllm): the cpu interface in front of the decoupled
mllm_llm. A KIND_CPU adapter: each noisy normalised image goes back to 8-bit pixels in host
memory and becomes one decoupled request to mllm_llm; answers keep the rows' order. The BLS
calls are answered by the test (the real mllm_llm needs TensorRT-LLM and a GPU); the image
processor is a Qwen2.5-VL checkpoint's, built here (smoothguard.synthetic.families)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from smoothguard.adapters.preprocess import ImagePreprocessor
from smoothguard.adapters.trtllm import denormalize_to_uint8

MODEL = "gpu/mllm_llm_api/mllm"
SIZE = 56  # mllm.image_size, a multiple of 28 (448 in the profile; smaller is quicker here)


@pytest.fixture(scope="module")
def qwen(family_checkpoint: Callable[[str], Path]) -> Path:
    return family_checkpoint("qwen2_5_vl")


@pytest.fixture
def adapter(load_model: Any, model_args: Any, qwen: Path) -> Any:
    model = load_model(MODEL).TritonPythonModel()
    model.initialize(model_args("llm_api", "mllm", model_path=str(qwen), image_size=str(SIZE)))
    return model


@pytest.fixture
def preprocess(qwen: Path) -> ImagePreprocessor:
    return ImagePreprocessor.load(qwen, SIZE)


class LLM:
    """mllm_llm as a decoupled model answers: one response with TEXT, then the final flag
    (an empty response), or an error."""

    def __init__(self, pb_utils: ModuleType) -> None:
        self.pb = pb_utils
        self.calls: list[Any] = []
        self.error: str | None = None
        self.silent = False

    async def __call__(self, request: Any) -> list[Any]:
        pb = self.pb
        assert request.model_name == "mllm_llm" and request.requested_output_names == ["TEXT"]
        self.calls.append(request)
        if self.error:
            return [pb.InferenceResponse(error=pb.TritonError(self.error)), pb.InferenceResponse()]
        if self.silent:
            return [pb.InferenceResponse()]
        inputs = {t.name(): t.as_numpy() for t in request.inputs}
        text = f"{inputs['PROMPT'][0].decode()} #{len(self.calls)}".encode()
        return [
            pb.InferenceResponse([pb.Tensor("TEXT", np.array([text], object))]),
            pb.InferenceResponse(),
        ]


def run(model: Any, *requests: Any) -> list[Any]:
    return asyncio.run(model.execute(list(requests)))


def normalised(count: int, preprocess: ImagePreprocessor) -> np.ndarray:
    images = np.random.default_rng(0).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)
    return preprocess(list(images))


def test_each_image_is_one_decoupled_request_with_8_bit_pixels(
    adapter: Any, pb_utils: ModuleType, preprocess: ImagePreprocessor
) -> None:
    llm = LLM(pb_utils)
    pb_utils.bls_handler = llm
    noisy = normalised(2, preprocess) + np.float32(0.05)
    prompts = np.array([[b"first"], [b"second"]], object)
    (response,) = run(
        adapter,
        pb_utils.Request(
            PIXEL_VALUES=noisy, PROMPT=prompts, MAX_NEW_TOKENS=np.array([[7], [7]], np.int32)
        ),
    )
    assert not response.has_error(), response.error().message()
    assert response.output("TEXT").shape == (2, 1)
    texts = response.output("TEXT").reshape(-1).tolist()
    assert [t.split(b" #")[0] for t in texts] == [b"first", b"second"]  # the rows' order
    assert all(call.decoupled for call in llm.calls), "mllm_llm is decoupled"
    for row, prompt, call in zip(noisy, prompts, llm.calls, strict=True):
        inputs = {t.name(): t for t in call.inputs}
        assert all(t.is_cpu() for t in call.inputs)
        image = inputs["IMAGE"].as_numpy()
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3)
        expected = denormalize_to_uint8(row, preprocess.mean, preprocess.std)
        np.testing.assert_array_equal(image, expected)
        assert inputs["PROMPT"].as_numpy().tolist() == [prompt[0]]
        assert inputs["MAX_NEW_TOKENS"].as_numpy().tolist() == [7]


def test_raw_images_are_resized_to_the_fixed_resolution(
    adapter: Any, pb_utils: ModuleType, preprocess: ImagePreprocessor
) -> None:
    llm = LLM(pb_utils)
    pb_utils.bls_handler = llm
    raw = np.random.default_rng(2).integers(0, 256, (1, 90, 70, 3), dtype=np.uint8)
    (response,) = run(adapter, pb_utils.Request(IMAGE=raw, PROMPT=np.array([[b"q"]], object)))
    assert not response.has_error(), response.error().message()
    (call,) = llm.calls
    image = next(t for t in call.inputs if t.name() == "IMAGE").as_numpy()
    expected = denormalize_to_uint8(preprocess([raw[0]])[0], preprocess.mean, preprocess.std)
    np.testing.assert_array_equal(image, expected)
    tokens = next(t for t in call.inputs if t.name() == "MAX_NEW_TOKENS").as_numpy()
    assert tokens.tolist() == [adapter.settings.max_new_tokens]


def test_the_llms_error_or_silence_fails_the_request_by_name(
    adapter: Any, pb_utils: ModuleType, preprocess: ImagePreprocessor
) -> None:
    llm = LLM(pb_utils)
    pb_utils.bls_handler = llm
    request = pb_utils.Request(
        PIXEL_VALUES=normalised(1, preprocess), PROMPT=np.array([[b"q"]], object)
    )
    llm.error = "KV cache exhausted"
    (response,) = run(adapter, request)
    assert response.has_error()
    assert "mllm_llm: KV cache exhausted" in response.error().message()
    llm.error, llm.silent = None, True
    (response,) = run(adapter, request)
    assert "mllm_llm gave no answer" in response.error().message()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"PROMPT": np.array([[b"q"]], object)}, "send IMAGE or PIXEL_VALUES"),
        ({"PIXEL_VALUES": "2", "PROMPT": np.array([[b"q"]], object)}, "1 prompts for 2 images"),
        ({"PIXEL_VALUES": "1", "PROMPT": np.array([[b"q"]], object),
          "MAX_NEW_TOKENS": np.array([[10_000]], np.int32)}, "MAX_NEW_TOKENS outside"),
    ],
    ids=["no-image", "rows", "tokens"],
)  # fmt: skip
def test_bad_requests_fail_alone_before_any_llm_call(
    adapter: Any,
    pb_utils: ModuleType,
    preprocess: ImagePreprocessor,
    inputs: dict[str, Any],
    message: str,
) -> None:
    llm = LLM(pb_utils)
    pb_utils.bls_handler = llm
    if "PIXEL_VALUES" in inputs:
        inputs = inputs | {"PIXEL_VALUES": normalised(int(inputs["PIXEL_VALUES"]), preprocess)}
    good = pb_utils.Request(
        PIXEL_VALUES=normalised(1, preprocess), PROMPT=np.array([[b"q"]], object)
    )
    bad, fine = run(adapter, pb_utils.Request(**inputs), good)
    assert bad.has_error() and message in bad.error().message(), bad.error().message()
    assert bad.error().code() == pb_utils.TritonError.INVALID_ARG
    assert not fine.has_error(), fine.error().message()
    assert len(llm.calls) == 1
