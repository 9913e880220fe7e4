"""mllm_llm (model_repository/gpu/mllm_llm_api/mllm_llm): TensorRT-LLM's LLM API as a
decoupled Python model. initialize() builds the LLM from the rendered config's parameters;
execute() hands every request to generate_async at once (the executor batches them in flight)
and each request gets exactly one response, flagged final, or its own error. TensorRT-LLM is a
fake (tests/model_repository/gpu/conftest.py: the package cannot be installed here); the
processor and chat template are the shipped models/synthvlm's."""

from __future__ import annotations

import asyncio
import json
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ..conftest import LLM, SYNTHVLM, FakeTensorRtLlm

MODEL = "gpu/mllm_llm_api/mllm_llm"


@pytest.fixture
def args(model_args: Any) -> dict[str, str]:
    return model_args("llm_api", "mllm_llm", model_path=str(SYNTHVLM))


def load(load_model: Any, args: dict[str, str]) -> Any:
    model = load_model(MODEL).TritonPythonModel()
    model.initialize(args)
    return model


def request(pb_utils: ModuleType, prompt: bytes, tokens: int = 6, seed: int = 0) -> Any:
    image = np.random.default_rng(seed).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    return pb_utils.Request(
        IMAGE=image,
        PROMPT=np.array([prompt], object),
        MAX_NEW_TOKENS=np.array([tokens], np.int32),
    )


def sent(req: Any) -> Any:
    """The one response a request got, which must be flagged final."""
    (only,) = req.sender.sent
    response, flags = only
    assert flags == 1, "the response must carry TRITONSERVER_RESPONSE_COMPLETE_FINAL"
    return response


@pytest.mark.parametrize("layout", ["0.21", "1.0"])
def test_the_llm_is_built_from_the_rendered_parameters(
    layout: str,
    load_model: Any,
    args: dict[str, str],
    tensorrt_llm: FakeTensorRtLlm,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TensorRT-LLM <= 0.21 (the pinned container) has the PyTorch-backend LLM in
    tensorrt_llm._torch; 1.0 and later at the top level: either is found."""
    tensorrt_llm.install(monkeypatch, torch_backend_module=layout == "0.21")
    model = load(load_model, args)
    (llm,) = tensorrt_llm.llms
    parameters = {
        k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()
    }
    assert llm.kwargs == {
        "model": str(SYNTHVLM),
        "max_batch_size": int(parameters["max_batch_size"]),
        "max_seq_len": int(parameters["max_seq_len"]),
        "kv_cache_config": {
            "free_gpu_memory_fraction": float(parameters["kv_cache_free_gpu_mem_fraction"]),
            "enable_block_reuse": False,
        },
    }
    model.finalize()
    assert llm.shut_down


def test_every_request_is_handed_to_the_llm_at_once_and_answered_once(
    load_model: Any,
    args: dict[str, str],
    pb_utils: ModuleType,
    tensorrt_llm: FakeTensorRtLlm,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fake answers only once all three are in: awaiting one before handing over the next
    # would fail them (the LLM's executor would never see them together).
    monkeypatch.setattr(LLM, "together", 3)
    model = load(load_model, args)
    requests = [
        request(pb_utils, b"Is there a red circle?", tokens=6, seed=0),
        request(pb_utils, b"  Describe the image. ", tokens=9, seed=1),
        request(pb_utils, b"Is there a blue square?", tokens=3, seed=2),
    ]
    assert asyncio.run(model.execute(requests)) is None  # decoupled: answers go by the senders
    (llm,) = tensorrt_llm.llms
    assert llm.together == 3 and len(llm.calls) == 3
    for index, (req, call) in enumerate(zip(requests, llm.calls, strict=True)):
        response = sent(req)
        assert not response.has_error(), response.error().message()
        assert response.output("TEXT").tolist() == [f"answer {index}".encode()]  # stripped
        prompt = req.inputs[1].as_numpy()[0].decode().strip()
        assert call["inputs"]["prompt"] == f"USER: <image> {prompt} ASSISTANT:"
        (image,) = call["inputs"]["multi_modal_data"]["image"]
        assert isinstance(image, Image.Image)
        np.testing.assert_array_equal(np.asarray(image), req.inputs[0].as_numpy())
        sampling = call["sampling"]
        assert sampling.max_tokens == int(req.inputs[2].as_numpy()[0])
        assert sampling.temperature == 0.0  # greedy: the noise makes the answers differ


@pytest.mark.parametrize(
    ("prompt", "message"),
    [(b"", "PROMPT is empty"), (b"\xff\xfe", "PROMPT is not valid UTF-8")],
    ids=["empty", "not-utf8"],
)
def test_a_bad_request_gets_its_own_final_error(
    prompt: bytes,
    message: str,
    load_model: Any,
    args: dict[str, str],
    pb_utils: ModuleType,
    tensorrt_llm: FakeTensorRtLlm,
) -> None:
    model = load(load_model, args)
    bad, good = request(pb_utils, prompt), request(pb_utils, b"Is there a red circle?")
    asyncio.run(model.execute([bad, good]))
    error = sent(bad)
    assert error.has_error() and message in error.error().message(), error.error().message()
    assert error.error().code() == pb_utils.TritonError.INVALID_ARG
    assert not sent(good).has_error()
    (llm,) = tensorrt_llm.llms
    assert len(llm.calls) == 1
