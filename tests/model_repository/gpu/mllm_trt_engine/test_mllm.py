"""mllm (model_repository/gpu/mllm_trt_engine/mllm): the cpu interface in front of LLaVA's
TensorRT-LLM engines. Per image one request to mllm_vision, then one to mllm_llm whose
prompt_embedding_table is the vision output handed on by DLPack: the same device memory,
never pulled to the host. The BLS calls are answered by the test (the real models need
TensorRT-LLM engines and a GPU); the tokenizer, preprocessing and prompt layout are real,
from the shipped models/synthvlm checkpoint."""

from __future__ import annotations

import asyncio
import json
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from smoothguard.adapters.preprocess import ImagePreprocessor

from ..conftest import SYNTHVLM

MODEL = "gpu/mllm_trt_engine/mllm"
VISUAL = 576  # the rendered num_visual_features (LLaVA-1.5's 24 x 24 patches)
HIDDEN = 16  # the prompt table's width: the LLM's hidden size (4096 for the 7B model)
ANSWERS = ["yes", "no"]


@pytest.fixture
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(SYNTHVLM))


@pytest.fixture
def args(model_args: Any) -> dict[str, str]:
    return model_args("trt_engine", "mllm", model_path=str(SYNTHVLM))


@pytest.fixture
def adapter(load_model: Any, args: dict[str, str]) -> Any:
    model = load_model(MODEL).TritonPythonModel()
    model.initialize(args)
    return model


def run(model: Any, *requests: Any) -> list[Any]:
    return asyncio.run(model.execute(list(requests)))


class Models:
    """mllm_vision and mllm_llm as the adapter calls them (BLS), recording every call. The
    vision output is in device memory; the LLM answers ANSWERS[k] for the k-th image, k told
    by the table's values."""

    def __init__(self, pb_utils: ModuleType, device_tensor: Any, tokenizer: Any) -> None:
        self.pb, self.device_tensor, self.tokenizer = pb_utils, device_tensor, tokenizer
        self.vision: list[Any] = []
        self.llm: list[dict[str, Any]] = []
        self.tables: list[Any] = []
        self.vision_error: str | None = None

    async def __call__(self, request: Any) -> Any:
        pb = self.pb
        inputs = {t.name(): t for t in request.inputs}
        if request.model_name == "mllm_vision":
            assert request.requested_output_names == ["encoder_output"]
            self.vision.append(inputs["input"].as_numpy().copy())
            if self.vision_error:
                return pb.InferenceResponse(error=pb.TritonError(self.vision_error))
            k = len(self.vision) - 1
            table = self.device_tensor(
                "encoder_output", torch.full((1, VISUAL, HIDDEN), float(k), dtype=torch.float16)
            )
            self.tables.append(table)
            return pb.InferenceResponse([table])
        assert request.model_name == "mllm_llm", request.model_name
        assert set(request.requested_output_names) == {"output_ids", "sequence_length"}
        self.llm.append(inputs)
        table = inputs["prompt_embedding_table"]
        k = int(table._dlpack[0, 0, 0].item())
        ids = self.tokenizer.encode(ANSWERS[k], add_special_tokens=False)
        ids += [self.tokenizer.eos_token_id, 0, 0]  # the rest is past sequence_length
        return pb.InferenceResponse(
            [
                pb.Tensor("output_ids", np.array([[ids]], np.int32)),
                pb.Tensor("sequence_length", np.array([len(ids) - 2], np.int32)),
            ]
        )


def pixels(count: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0, 1, (count, 3, 64, 64)).astype(np.float32)


def test_each_image_is_encoded_then_generated_with_its_table_left_on_the_device(
    adapter: Any, pb_utils: ModuleType, device_tensor: Any, tokenizer: Any
) -> None:
    models = Models(pb_utils, device_tensor, tokenizer)
    pb_utils.bls_handler = models
    values = pixels(2)
    prompts = np.array([[b"Is there a red circle?"], [b"Is there a blue square?"]], np.object_)
    tokens = np.array([[5], [5]], np.int32)
    (response,) = run(
        adapter, pb_utils.Request(PIXEL_VALUES=values, PROMPT=prompts, MAX_NEW_TOKENS=tokens)
    )
    assert not response.has_error(), response.error().message()
    assert response.output("TEXT").reshape(-1).tolist() == [b"yes", b"no"]

    # Vision: one image [1, 3, H, W] fp32 per call, the request's own pixels.
    assert len(models.vision) == 2
    for row, sent in zip(values, models.vision, strict=True):
        assert sent.dtype == np.float32 and sent.shape == (1, *row.shape)
        np.testing.assert_array_equal(sent[0], row)

    # LLM: the vision output's own memory as the prompt table (DLPack, no copy, no host trip:
    # as_numpy() on it would have failed), and ids that point into it.
    vocab = 62  # models/synthvlm's text vocabulary
    for k, inputs in enumerate(models.llm):
        table = inputs["prompt_embedding_table"]
        source = next(t for t in models.tables if int(t._dlpack[0, 0, 0].item()) == k)
        assert table.data_ptr() == source.data_ptr(), "the prompt table was copied"
        assert (
            table._dlpack.dtype == torch.float16 and table._dlpack.device == source._dlpack.device
        )
        ids = inputs["input_ids"].as_numpy().reshape(-1)
        assert ids[0] == tokenizer.bos_token_id
        image_rows = ids[(ids >= vocab)]
        np.testing.assert_array_equal(image_rows, np.arange(vocab, vocab + VISUAL))
        assert inputs["input_lengths"].as_numpy().item() == len(ids)
        assert inputs["prompt_vocab_size"].as_numpy().item() == VISUAL
        assert inputs["request_output_len"].as_numpy().item() == 5
        assert inputs["runtime_top_k"].as_numpy().item() == 1
        assert inputs["end_id"].as_numpy().item() == tokenizer.eos_token_id
        question = tokenizer.decode(ids[ids < vocab].tolist(), skip_special_tokens=True)
        asked = tokenizer.encode(prompts[k, 0].decode(), add_special_tokens=False)
        assert tokenizer.decode(asked, skip_special_tokens=True) in question, question


def test_images_are_preprocessed_like_the_noise_step(
    adapter: Any, args: dict[str, str], pb_utils: ModuleType, device_tensor: Any, tokenizer: Any
) -> None:
    models = Models(pb_utils, device_tensor, tokenizer)
    pb_utils.bls_handler = models
    image = np.random.default_rng(1).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    (response,) = run(
        adapter,
        pb_utils.Request(IMAGE=image[None], PROMPT=np.array([[b"Describe the image."]], object)),
    )
    assert not response.has_error(), response.error().message()
    expected = ImagePreprocessor.load(SYNTHVLM)([image])[0]
    np.testing.assert_allclose(models.vision[0][0], expected, atol=1e-6)
    # MAX_NEW_TOKENS not sent: the rendered config's default
    default = json.loads(args["model_config"])["parameters"]["max_new_tokens"]["string_value"]
    assert models.llm[0]["request_output_len"].as_numpy().item() == int(default)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"PROMPT": np.array([[b"q"]], object)}, "send IMAGE or PIXEL_VALUES"),
        (
            {"PIXEL_VALUES": pixels(2), "PROMPT": np.array([[b"q"]], object)},
            "1 prompts for 2 images",
        ),
        (
            {
                "PIXEL_VALUES": pixels(1),
                "PROMPT": np.array([[b"q"]], object),
                "MAX_NEW_TOKENS": np.array([[0]], np.int32),
            },
            "MAX_NEW_TOKENS outside",
        ),
    ],
    ids=["no-image", "rows", "tokens"],
)
def test_bad_requests_fail_alone_before_any_model_call(
    adapter: Any,
    pb_utils: ModuleType,
    device_tensor: Any,
    tokenizer: Any,
    inputs: dict[str, np.ndarray],
    message: str,
) -> None:
    models = Models(pb_utils, device_tensor, tokenizer)
    pb_utils.bls_handler = models
    good = pb_utils.Request(PIXEL_VALUES=pixels(1), PROMPT=np.array([[b"q"]], object))
    bad, fine = run(adapter, pb_utils.Request(**inputs), good)
    assert bad.has_error() and message in bad.error().message(), bad.error().message()
    assert bad.error().code() == pb_utils.TritonError.INVALID_ARG
    assert not fine.has_error(), fine.error().message()
    assert len(models.vision) == 1  # the good request's image only


def test_a_vision_failure_names_the_model(
    adapter: Any, pb_utils: ModuleType, device_tensor: Any, tokenizer: Any
) -> None:
    models = Models(pb_utils, device_tensor, tokenizer)
    models.vision_error = "engine out of memory"
    pb_utils.bls_handler = models
    (response,) = run(
        adapter, pb_utils.Request(PIXEL_VALUES=pixels(1), PROMPT=np.array([[b"q"]], object))
    )
    assert response.has_error()
    assert "mllm_vision: engine out of memory" in response.error().message()
    assert not models.llm
