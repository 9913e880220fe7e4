"""Hand tensors between Triton's Python backend and CuPy without host copies.

Only importable inside the Python backend stub. With FORCE_CPU_ONLY_INPUT_TENSORS "no" an
input may arrive on either device; these helpers keep a GPU tensor on the GPU.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.core.xp import is_cupy


def as_array(tensor: Any, xp: ModuleType) -> Any:
    """A pb_utils.Tensor as an `xp` array: a zero-copy view where it already lives there."""
    if tensor.is_cpu():
        return xp.asarray(tensor.as_numpy())
    if xp is np:
        import cupy  # a GPU tensor in a CPU model: one explicit device-to-host copy

        return cupy.from_dlpack(tensor.to_dlpack()).get()
    return xp.from_dlpack(tensor.to_dlpack())


def output_tensor(name: str, array: Any) -> Any:
    """A pb_utils.Tensor that shares `array`'s memory (DLPack) when it is on the GPU."""
    if is_cupy(array):
        return pb_utils.Tensor.from_dlpack(name, array)
    return pb_utils.Tensor(name, np.ascontiguousarray(array))
