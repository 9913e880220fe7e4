"""Fixtures for the GPU adapters (model_repository/gpu) under the fake pb_utils: the
parameters their rendered gpu configs give them, tensors on the device, and stand-ins for the
GPU packages that cannot be installed here.

Not installed, and not installable on this machine (no GPU, no CUDA; their wheels are CUDA
builds): TensorRT-LLM (`tensorrt_llm`, which brings TensorRT) and CuPy. The fakes below stand
in for the few names the adapters use and record what the adapters hand them; the rest is
real: torch (DLPack, dtypes), transformers with the shipped models/synthvlm tokenizer and
processor, the rendered configs, and the project's fake pb_utils.

Device memory: on a machine with a GPU (torch.cuda.is_available()) the device tensors are
real CUDA tensors. Without one they are host tensors that the fake pb_utils treats as device
memory (is_cpu() False, as_numpy() refused, as the stub does for GPU tensors), so an adapter
that pulled a device tensor to the host fails here too; sharing is checked by address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from render import parse_model_config, render

REPO_ROOT = Path(__file__).resolve().parents[3]
SYNTHVLM = REPO_ROOT / "models" / "synthvlm"
# The gpu profile's MLLM runtimes, rendered as tests/build/test_gpu_profile.py does.
RUNTIMES = {
    "trt_engine": [],
    "llm_api": ["mllm.runtime=llm_api", "mllm.family=qwen2_5_vl", "mllm.image_size=448"],
}
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture(scope="session")
def rendered_gpu(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The gpu repository for a runtime, rendered once per session."""
    repos: dict[str, Path] = {}

    def repo(runtime: str) -> Path:
        if runtime not in repos:
            out = tmp_path_factory.mktemp(f"gpu-{runtime}") / "repo"
            repos[runtime] = render("gpu", out, RUNTIMES[runtime])
        return repos[runtime]

    return repo


@pytest.fixture
def model_args(rendered_gpu: Callable[[str], Path]) -> Callable[..., dict[str, str]]:
    """initialize()'s args for one model of a rendered gpu repository, as Triton passes them
    (model_config as JSON, model_repository the model's folder), with some parameters
    replaced: the checkpoints and engines the config points at are not on this machine."""

    def args(runtime: str, model: str, **parameters: str) -> dict[str, str]:
        folder = rendered_gpu(runtime) / model
        config = parse_model_config((folder / "config.pbtxt").read_text(), folder)
        values = {k: v.string_value for k, v in config.parameters.items()}
        unknown = set(parameters) - set(values)
        assert not unknown, f"{model}'s rendered config has no parameters {unknown}"
        values |= parameters
        model_config = {
            "name": config.name,
            "max_batch_size": config.max_batch_size,
            "parameters": {k: {"string_value": v} for k, v in values.items()},
        }
        return {"model_config": json.dumps(model_config), "model_repository": str(folder)}

    return args


@pytest.fixture
def device_tensor(pb_utils: ModuleType) -> Callable[[str, torch.Tensor], Any]:
    """A pb_utils.Tensor in device memory (see the module doc), made by DLPack like the
    stub's own tensors."""

    class OnDevice(pb_utils.Tensor):  # type: ignore[name-defined,misc]
        def is_cpu(self) -> bool:
            return False

        def as_numpy(self) -> np.ndarray:
            raise pb_utils.TritonModelException(
                "Tensor is stored in GPU and cannot be converted to NumPy."
            )

    def make(name: str, data: torch.Tensor) -> Any:
        if CUDA:
            return pb_utils.Tensor.from_dlpack(name, data.cuda())
        tensor = OnDevice.from_dlpack(name, data)
        assert isinstance(tensor, OnDevice)
        return tensor

    return make


# -- TensorRT-LLM ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """tensorrt_llm.runtime.TensorInfo: a tensor's name, TensorRT dtype and shape."""

    name: str
    dtype: Any
    shape: tuple[int, ...]


class Session:
    """tensorrt_llm.runtime.Session over a fake vision engine: each image [3, H, W] becomes
    `features` rows of `hidden` values, row r = the image's mean + r, so a test can tell
    images and rows apart. run() writes into the output buffers it is given, on their
    device, as TensorRT does, and returns False when `fail` is set."""

    features: ClassVar[int] = 4
    hidden: ClassVar[int] = 8

    def __init__(self, engine: bytes) -> None:
        self.engine = engine
        self.runs: list[dict[str, Any]] = []
        self.fail = False

    def infer_shapes(self, inputs: list[TensorInfo]) -> list[TensorInfo]:
        (info,) = inputs
        assert info.name == "input" and len(info.shape) == 4, info
        return [
            TensorInfo("encoder_output", info.dtype, (info.shape[0], self.features, self.hidden))
        ]

    def run(
        self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], stream: Any
    ) -> bool:
        images, out = inputs["input"], outputs["encoder_output"]
        self.runs.append({"input": images.clone(), "output": out, "stream": stream})
        if self.fail:
            return False
        means = images.float().mean(dim=(1, 2, 3))
        rows = torch.arange(self.features, dtype=torch.float32, device=images.device)
        values = means[:, None, None] + rows[None, :, None]
        out.copy_(values.expand(out.shape).to(out.dtype))
        return True


@dataclass
class SamplingParams:
    """tensorrt_llm.SamplingParams: the two settings the LLM API adapter passes."""

    max_tokens: int
    temperature: float


@dataclass
class _Output:
    text: str


@dataclass
class _Result:
    outputs: list[_Output]


class LLM:
    """The LLM API's LLM (PyTorch backend): generate_async(...) returns a request whose
    aresult() is the answer. Answers wait until `together` requests have been handed over,
    so an adapter that awaited one request before handing over the next would hang here
    (bounded by `wait_s`, then the request fails)."""

    together: ClassVar[int] = 1
    wait_s: ClassVar[float] = 10.0

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[dict[str, Any]] = []
        self.shut_down = False
        self._all_in: asyncio.Event | None = None

    def generate_async(self, inputs: dict[str, Any], sampling_params: SamplingParams) -> Any:
        if self._all_in is None:
            self._all_in = asyncio.Event()
        self.calls.append({"inputs": inputs, "sampling": sampling_params})
        if len(self.calls) >= self.together:
            self._all_in.set()
        index, event = len(self.calls) - 1, self._all_in

        class Request:
            async def aresult(_self) -> _Result:
                await asyncio.wait_for(event.wait(), self.wait_s)
                return _Result([_Output(f"  answer {index}\n")])

        return Request()

    def shutdown(self) -> None:
        self.shut_down = True


@dataclass
class FakeTensorRtLlm:
    """What the fake tensorrt_llm saw: the sessions and LLMs the adapters made."""

    sessions: list[Session] = field(default_factory=list)
    llms: list[LLM] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch, *, torch_backend_module: bool) -> None:
        """`torch_backend_module`: LLM lives in tensorrt_llm._torch (TensorRT-LLM <= 0.21,
        the pinned container), else at the top level (1.0 and later)."""
        made = self

        class RecordedSession(Session):
            @classmethod
            def from_serialized_engine(cls, engine: bytes) -> Session:
                session = cls(engine)
                made.sessions.append(session)
                return session

        class RecordedLLM(LLM):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                made.llms.append(self)

        dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
        package = _module("tensorrt_llm", SamplingParams=SamplingParams)
        package.__path__ = []  # a package, so its submodules import
        utils = _module(
            "tensorrt_llm._utils",
            str_dtype_to_torch=dtypes.__getitem__,
            torch_dtype_to_trt=lambda dtype: f"trt.{dtype}",
        )
        runtime = _module("tensorrt_llm.runtime", Session=RecordedSession, TensorInfo=TensorInfo)
        modules = {"tensorrt_llm": package, "tensorrt_llm._utils": utils}
        modules["tensorrt_llm.runtime"] = runtime
        if torch_backend_module:
            modules["tensorrt_llm._torch"] = _module("tensorrt_llm._torch", LLM=RecordedLLM)
        else:
            package.LLM = RecordedLLM
            modules["tensorrt_llm._torch"] = None  # type: ignore[assignment]  # import fails
        for name, module in modules.items():
            monkeypatch.setitem(sys.modules, name, module)


def _module(name: str, **attributes: Any) -> ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


@pytest.fixture
def tensorrt_llm(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRtLlm:
    """The fake tensorrt_llm (TensorRT-LLM 0.21's layout), in sys.modules for this test."""
    fake = FakeTensorRtLlm()
    fake.install(monkeypatch, torch_backend_module=True)
    monkeypatch.setattr(LLM, "together", 1)
    return fake


# -- CuPy ---------------------------------------------------------------------------------------


class DeviceArray:
    """cupy.ndarray: memory held by a torch tensor (on the GPU where there is one), shared by
    DLPack; .get() is the explicit device-to-host copy."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        return self.data.__dlpack_device__()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def get(self) -> np.ndarray:
        return self.data.cpu().numpy().copy()


@pytest.fixture
def cupy(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A stand-in CuPy, importable and picked by smoothguard.core.xp for its arrays."""
    from torch.utils.dlpack import from_dlpack

    from smoothguard.core import xp

    fake = _module("cupy", ndarray=DeviceArray)
    fake.from_dlpack = lambda source: DeviceArray(from_dlpack(source))
    fake.asarray = lambda a: (
        a
        if isinstance(a, DeviceArray)
        else DeviceArray(torch.as_tensor(np.asarray(a), device=DEVICE))
    )
    fake.get_array_module = lambda a: fake if isinstance(a, DeviceArray) else np
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(xp, "_cupy", lambda: fake)
    return fake


# -- "cuda" on a machine without one ---------------------------------------------------------------


class HostCuda:
    """For an adapter module that puts tensors on "cuda" itself (module globals `torch` and
    `from_dlpack`): with a GPU, nothing changes. Without one, "cuda" is served from host
    memory and every placement the adapter asks for is recorded in `asked` ("to cuda": a
    tensor moved there, "empty cuda": one allocated there), so the test still sees what it
    asked for; torch.cuda's streams become no-ops."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.synchronized = 0

    def install(self, module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
        if CUDA:
            return
        placement = self

        class Placed(torch.Tensor):
            def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
                plain = self.as_subclass(torch.Tensor)
                device = kwargs.pop("device", None)
                if args and isinstance(args[0], str | torch.device):
                    device, args = args[0], args[1:]
                placement.asked.append(f"to {device}")
                if device is None:
                    return plain.to(*args, **kwargs)
                return plain.to(placement.host(device), *args, **kwargs)

        class Stream:
            cuda_stream = 0

            def synchronize(_self) -> None:
                placement.synchronized += 1

        cuda = _module(
            "torch.cuda",
            current_stream=lambda: Stream(),
            stream=lambda _stream: contextlib.nullcontext(),
            is_available=lambda: False,
        )

        def empty(*shape: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
            placement.asked.append(f"empty {device}")
            return torch.empty(*shape, device=placement.host(device), **kwargs)

        shim = _module("torch", cuda=cuda, empty=empty)
        for name in ("cat", "float16", "float32", "bfloat16", "Tensor"):
            setattr(shim, name, getattr(torch, name))
        real_from_dlpack = module.from_dlpack
        monkeypatch.setattr(module, "torch", shim)
        monkeypatch.setattr(
            module, "from_dlpack", lambda capsule: real_from_dlpack(capsule).as_subclass(Placed)
        )

    @staticmethod
    def host(device: Any) -> Any:
        return "cpu" if device is not None and str(device).startswith("cuda") else device


@pytest.fixture
def host_cuda() -> HostCuda:
    return HostCuda()
