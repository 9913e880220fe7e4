"""smoothguard_triton.dlpack, the hand-over between Triton tensors and CuPy the GPU noise step
uses: a tensor stays where it lives (device memory shared by DLPack, never a copy), and only a
device tensor reaching a CPU model makes one explicit copy to the host. CuPy is a stand-in
(tests/model_repository/gpu/conftest.py: it cannot be installed here); device memory is real
CUDA memory where there is a GPU."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from .conftest import DEVICE, DeviceArray


@pytest.fixture
def dlpack(pb_utils: ModuleType, cupy: ModuleType) -> ModuleType:
    return importlib.import_module("smoothguard_triton.dlpack")


def test_a_host_tensor_is_a_host_array_without_a_copy(
    dlpack: ModuleType, pb_utils: ModuleType
) -> None:
    tensor = pb_utils.Tensor("PIXEL_VALUES", np.arange(12, dtype=np.float32).reshape(3, 4))
    array = dlpack.as_array(tensor, np)
    assert isinstance(array, np.ndarray) and np.shares_memory(array, tensor.as_numpy())


def test_a_device_tensor_stays_on_the_device_for_a_gpu_model(
    dlpack: ModuleType, cupy: ModuleType, device_tensor: Any
) -> None:
    tensor = device_tensor("PIXEL_VALUES", torch.arange(12, dtype=torch.float32).reshape(3, 4))
    array = dlpack.as_array(tensor, cupy)
    assert isinstance(array, DeviceArray)
    assert array.data.data_ptr() == tensor.data_ptr(), "copied instead of shared"
    assert array.data.device.type == DEVICE


def test_a_device_tensor_reaching_a_cpu_model_is_copied_to_the_host_once(
    dlpack: ModuleType, device_tensor: Any
) -> None:
    data = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensor = device_tensor("PIXEL_VALUES", data)
    array = dlpack.as_array(tensor, np)
    assert isinstance(array, np.ndarray)
    np.testing.assert_array_equal(array, data.numpy())
    assert array.__array_interface__["data"][0] != tensor.data_ptr(), "a host copy, not a view"


def test_a_device_array_leaves_by_dlpack_and_a_host_array_as_a_plain_tensor(
    dlpack: ModuleType, cupy: ModuleType
) -> None:
    copies = cupy.asarray(np.ones((2, 3, 4, 4), np.float32))
    out = dlpack.output_tensor("PIXEL_VALUES", copies)
    assert out.name() == "PIXEL_VALUES"
    assert out.data_ptr() == copies.data.data_ptr(), "the device array was copied"
    assert out.is_cpu() == (DEVICE == "cpu")

    strided = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]  # not contiguous
    host = dlpack.output_tensor("PIXEL_VALUES", strided)
    assert host.is_cpu() and host._dlpack is None
    assert host.as_numpy().flags.c_contiguous
    np.testing.assert_array_equal(host.as_numpy(), strided)
