"""mllm_vision (model_repository/gpu/mllm_trt_engine/mllm_vision): LLaVA's vision engine in a
Python model. Images come in by DLPack (FORCE_CPU_ONLY_INPUT_TENSORS no: they may be on the
GPU), go to the engine's device in its dtype, all requests' images in engine calls of at most
max_batch_size rows, and the prompt tables leave by DLPack, on the device the engine wrote
them. TensorRT-LLM's Session is a fake (tests/model_repository/gpu/conftest.py: the package
cannot be installed here)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from ..conftest import CUDA, DEVICE, FakeTensorRtLlm, HostCuda, Session

MODEL = "gpu/mllm_trt_engine/mllm_vision"


def engine_dir(tmp_path: Path, precision: str = "float16") -> Path:
    """What build_multimodal_engine.py writes: model.engine and its config.json."""
    folder = tmp_path / "vision"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"builder_config": {"precision": precision}}))
    (folder / "model.engine").write_bytes(b"a serialized engine")
    return folder


@pytest.fixture
def vision(
    load_model: Any,
    model_args: Any,
    tensorrt_llm: FakeTensorRtLlm,
    host_cuda: HostCuda,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    def make(max_batch_size: int | None = None) -> Any:
        module = load_model(MODEL)
        host_cuda.install(module, monkeypatch)
        args = model_args(
            "trt_engine", MODEL.rsplit("/", 1)[1], engine_dir=str(engine_dir(tmp_path))
        )
        if max_batch_size is not None:
            config = json.loads(args["model_config"])
            args["model_config"] = json.dumps(config | {"max_batch_size": max_batch_size})
        model = module.TritonPythonModel()
        model.initialize(args)
        return model

    return make


def images(count: int, start: int) -> torch.Tensor:
    """`count` images [3, 8, 8] fp32 with means start, start+1, ... (told apart by the fake
    engine's output)."""
    return torch.stack([torch.full((3, 8, 8), float(start + i)) for i in range(count)])


def request(pb_utils: ModuleType, device_tensor: Any, pixels: torch.Tensor) -> Any:
    """A request whose input lies in device memory: read by DLPack, or not at all."""
    return pb_utils.Request(input=device_tensor("input", pixels))


def test_all_requests_images_run_as_one_engine_call_and_leave_by_dlpack(
    vision: Any,
    pb_utils: ModuleType,
    device_tensor: Any,
    tensorrt_llm: FakeTensorRtLlm,
    host_cuda: HostCuda,
) -> None:
    model = vision()
    (session,) = tensorrt_llm.sessions
    assert session.engine == b"a serialized engine"
    batches = [images(1, 0), images(2, 10)]
    responses = model.execute([request(pb_utils, device_tensor, b) for b in batches])

    # One engine call for the three images, in the engine's dtype, on the device.
    (run,) = session.runs
    engine_input = run["input"]
    assert engine_input.dtype == torch.float16 and engine_input.is_contiguous()
    assert engine_input.device.type == DEVICE
    np.testing.assert_array_equal(engine_input.cpu().float().numpy(), torch.cat(batches).numpy())
    if not CUDA:  # each request's images moved to the GPU, the output allocated there
        assert host_cuda.asked == ["to cuda", "to cuda", "empty cuda"], host_cuda.asked
        assert host_cuda.synchronized == 1  # the output is complete before it leaves
    engine_output = run["output"]

    # Per request its own rows, fp16 [rows, features, hidden], handed on by DLPack from the
    # device the engine wrote them on (never through host memory).
    start = 0
    for batch, response in zip(batches, responses, strict=True):
        assert not response.has_error(), response.error().message()
        (out,) = response.output_tensors()
        assert out.name() == "encoder_output"
        assert out._dlpack is not None, "the prompt table must leave by DLPack"
        assert out.is_cpu() == (DEVICE == "cpu")
        table = out._dlpack
        assert table.dtype == torch.float16 and table.device == engine_output.device
        assert tuple(table.shape) == (len(batch), Session.features, Session.hidden)
        expected = engine_output[start : start + len(batch)]
        np.testing.assert_array_equal(table.cpu().numpy(), expected.cpu().numpy())
        means = batch.mean(dim=(1, 2, 3)).numpy()
        np.testing.assert_array_equal(table.cpu().float().numpy()[:, 0, 0], means)
        start += len(batch)


def test_images_past_max_batch_size_run_in_several_engine_calls(
    vision: Any, pb_utils: ModuleType, device_tensor: Any, tensorrt_llm: FakeTensorRtLlm
) -> None:
    model = vision(max_batch_size=2)
    batches = [images(2, 0), images(3, 20)]
    responses = model.execute([request(pb_utils, device_tensor, b) for b in batches])
    (session,) = tensorrt_llm.sessions
    assert [len(r["input"]) for r in session.runs] == [2, 2, 1]
    tables = [r.output_tensors()[0]._dlpack.cpu().float().numpy() for r in responses]
    assert [t.shape[0] for t in tables] == [2, 3]
    np.testing.assert_array_equal(tables[1][:, 0, 0], [20.0, 21.0, 22.0])


def test_a_failed_engine_call_fails_the_batch_and_nothing_else(
    vision: Any, pb_utils: ModuleType, device_tensor: Any, tensorrt_llm: FakeTensorRtLlm
) -> None:
    model = vision()
    (session,) = tensorrt_llm.sessions
    session.fail = True
    responses = model.execute([request(pb_utils, device_tensor, images(1, 0)) for _ in range(2)])
    for response in responses:
        assert response.has_error()
        assert "vision engine's TensorRT session failed" in response.error().message()
        assert response.error().code() == pb_utils.TritonError.INTERNAL
    session.fail = False
    (response,) = model.execute([request(pb_utils, device_tensor, images(1, 5))])
    assert not response.has_error(), response.error().message()
