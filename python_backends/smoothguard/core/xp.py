"""Pick NumPy or CuPy so the defense math runs unchanged on CPU and GPU.

CuPy is imported lazily and only here: importing it at module import time would make every
CPU-only deployment (and the test suite) depend on a CUDA toolkit being present.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Literal

import numpy as np

Device = Literal["auto", "cpu", "gpu"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")


@functools.cache
def _cupy() -> ModuleType | None:
    """CuPy if it imports, else None; cached because a failed import is slow to repeat."""
    try:
        import cupy  # type: ignore[import-not-found]
    except (ImportError, OSError, RuntimeError):  # not installed, or CUDA libraries broken
        return None
    return cupy


@functools.cache
def _gpu_count() -> int:
    cp = _cupy()
    if cp is None:
        return 0
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except (RuntimeError, OSError):  # no driver / no device: CUDARuntimeError is a RuntimeError
        return 0


@functools.cache
def cuml_available() -> bool:
    """True when RAPIDS cuML imports (it needs a GPU); cached, the import is slow."""
    if not gpu_available():
        return False
    try:
        import cuml.cluster  # type: ignore[import-not-found]  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return _gpu_count() > 0


def get_xp(device: Device = "auto") -> ModuleType:
    """The array module for `device`; "auto" uses the GPU only when it is really usable."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return np
    if gpu_available():
        return _cupy()  # type: ignore[return-value]
    if device == "gpu":
        reason = "cupy is not installed" if _cupy() is None else "no CUDA device is visible"
        raise RuntimeError(f"device='gpu' requested but {reason}; use device='cpu' or 'auto'")
    return np


def array_module(arr: Any) -> ModuleType:
    """The module that owns `arr`, so helpers follow their input instead of a global flag."""
    cp = _cupy()
    if cp is None:
        return np
    return cp.get_array_module(arr)


def is_cupy(arr: Any) -> bool:
    return array_module(arr) is not np


def to_numpy(arr: Any) -> np.ndarray:
    """A host copy (CuPy) or a view (NumPy); callers that log or serialise need host memory."""
    if is_cupy(arr):
        return arr.get()
    return np.asarray(arr)
