"""A small stand-in for triton_python_backend_utils, enough to run our model.py adapters.

It exists only so the adapters' own logic (fan-out, error mapping, failure modes) can be
tested without a server; the integration tests run the same files inside real Triton.
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


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)


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


class Request:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = [Tensor(k, v) for k, v in inputs.items()]

    def request_id(self) -> str:
        return "test-request"


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


# The test installs what a BLS call does: a coroutine taking the InferenceRequest.
bls_handler: Callable[[InferenceRequest], Awaitable[InferenceResponse]] | None = None


class InferenceRequest:
    def __init__(self, model_name: str, requested_output_names: list[str], inputs: list[Tensor]):
        self.model_name, self.requested_output_names, self.inputs = (
            model_name,
            requested_output_names,
            inputs,
        )

    def async_exec(self) -> Awaitable[InferenceResponse]:
        assert bls_handler is not None, "test must set fake_pb_utils.bls_handler"
        return bls_handler(self)


def get_input_tensor_by_name(request: Any, name: str) -> Tensor | None:
    return next((t for t in request.inputs if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def model_args(parameters: dict[str, str]) -> dict[str, str]:
    config = {"parameters": {k: {"string_value": v} for k, v in parameters.items()}}
    return {"model_config": json.dumps(config)}
