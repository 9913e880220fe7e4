"""A small stand-in for triton_python_backend_utils, enough to run our model.py adapters.

It exists only so the adapters' own logic (fan-out, error mapping, failure modes) can be
tested without a server; the integration tests run the same files inside real Triton.

DLPack as the stub does it (Tensor.from_dlpack / to_dlpack / is_cpu): a tensor made from DLPack
shares the producer's memory, on the producer's device, and as_numpy() refuses a tensor that
is not in host memory. torch does the DLPack work here (any device torch has).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import numpy as np


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE = 0, 1, 2, 3, 4

    def __init__(self, message: str, code: int = 1) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    pass


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)
        self._dlpack: Any = None  # the torch tensor behind one made by from_dlpack

    @classmethod
    def from_dlpack(cls, name: str, source: Any) -> Tensor:
        """A tensor sharing the memory of `source` (a DLPack capsule, or an object with
        __dlpack__), on its device: no copy, as in the stub."""
        from torch.utils.dlpack import from_dlpack

        tensor = cls.__new__(cls)
        tensor._name, tensor._array, tensor._dlpack = name, None, from_dlpack(source)
        return tensor

    def name(self) -> str:
        return self._name

    def is_cpu(self) -> bool:
        return self._dlpack is None or self._dlpack.device.type == "cpu"

    def as_numpy(self) -> np.ndarray:
        if self._array is None:
            if not self.is_cpu():
                raise TritonModelException(
                    "Tensor is stored in GPU and cannot be converted to NumPy."
                )
            self._array = self._dlpack.numpy()  # a view: same memory
        return self._array

    def to_dlpack(self) -> Any:
        """A DLPack capsule of this tensor's own memory (no copy)."""
        import torch
        from torch.utils.dlpack import to_dlpack

        if self._dlpack is not None:
            return to_dlpack(self._dlpack)
        if self._array.dtype == np.object_:
            raise TritonModelException("BYTES tensors cannot be shared by DLPack")
        return to_dlpack(torch.from_numpy(self._array))

    def data_ptr(self) -> int:
        """Test helper (not in pb_utils): the address of the memory, to check sharing."""
        if self._dlpack is not None:
            return int(self._dlpack.data_ptr())
        return int(self._array.__array_interface__["data"][0])

    def shape(self) -> list[int]:
        source = self._array if self._dlpack is None else self._dlpack
        return list(source.shape)


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: Any = None) -> None:
        self._outputs, self._error = output_tensors or [], error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError:
        return self._error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def output(self, name: str) -> np.ndarray:
        return next(t.as_numpy() for t in self._outputs if t.name() == name)


TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class ResponseSender:
    """A decoupled model's sender: `sent` keeps (response, flags) in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[InferenceResponse | None, int]] = []

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self.sent and self.sent[-1][1] & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException("the final response was already sent")
        self.sent.append((response, flags))


class Request:
    def __init__(self, **inputs: Any) -> None:
        # numpy arrays, or Tensors as they are (e.g. made from DLPack)
        self.inputs = [v if isinstance(v, Tensor) else Tensor(k, v) for k, v in inputs.items()]
        self.sender = ResponseSender()

    def request_id(self) -> str:
        return "test-request"

    def get_response_sender(self) -> ResponseSender:
        return self.sender


class Logger:
    lines: ClassVar[list[str]] = []

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.lines.append(message)


class Metric:
    """A metric as the stub's API behaves: counters only go up, histograms only observe."""

    def __init__(self, family: MetricFamily, labels: dict[str, str], buckets: Any) -> None:
        self.family, self.labels, self.buckets = family, labels, buckets
        self._value = 0.0
        self.observations: list[float] = []

    def increment(self, value: float) -> None:
        if self.family.kind == MetricFamily.HISTOGRAM:
            raise RuntimeError("histograms do not support increment")
        if self.family.kind == MetricFamily.COUNTER and value < 0:
            raise RuntimeError("counters only increase")
        self._value += value

    def observe(self, value: float) -> None:
        if self.family.kind != MetricFamily.HISTOGRAM:
            raise RuntimeError("only histograms support observe")
        self.observations.append(value)

    def value(self) -> float:
        if self.family.kind == MetricFamily.HISTOGRAM:
            raise RuntimeError("histograms do not support value")
        return self._value


class MetricFamily:
    """pb_utils.MetricFamily; `created` keeps every family made, by name, for assertions."""

    COUNTER, GAUGE, HISTOGRAM = 0, 1, 2
    created: ClassVar[dict[str, list[MetricFamily]]] = {}

    def __init__(self, name: str, description: str, kind: int) -> None:
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[Metric] = []
        MetricFamily.created.setdefault(name, []).append(self)

    def Metric(self, labels: dict[str, str] | None = None, buckets: Any = None) -> Metric:
        if not isinstance(labels or {}, dict):
            raise RuntimeError("Failed to create metric. Labels must be a dictionary.")
        if (self.kind == MetricFamily.HISTOGRAM) != (buckets is not None):
            raise RuntimeError("Failed to create metric: buckets are for histograms only.")
        if buckets is not None and list(buckets) != sorted(set(buckets)):
            raise RuntimeError("bucket boundaries must increase")
        metric = Metric(self, dict(labels or {}), buckets)
        self.metrics.append(metric)
        return metric


# The test installs what a BLS call does: a coroutine taking the InferenceRequest (returning
# one response, or for a decoupled call the list of responses).
bls_handler: Callable[[InferenceRequest], Awaitable[Any]] | None = None


class InferenceRequest:
    def __init__(self, model_name: str, requested_output_names: list[str], inputs: list[Tensor]):
        self.model_name, self.requested_output_names, self.inputs = (
            model_name,
            requested_output_names,
            inputs,
        )
        self.decoupled = False  # how async_exec was called

    def async_exec(self, decoupled: bool = False) -> Awaitable[Any]:
        assert bls_handler is not None, "test must set fake_pb_utils.bls_handler"
        self.decoupled = decoupled
        return bls_handler(self)


def get_input_tensor_by_name(request: Any, name: str) -> Tensor | None:
    return next((t for t in request.inputs if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def model_args(parameters: dict[str, str]) -> dict[str, str]:
    config = {"parameters": {k: {"string_value": v} for k, v in parameters.items()}}
    return {"model_config": json.dumps(config)}
