"""Array-module selection: CPU always works, GPU only when really there, no eager CuPy."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from smoothguard.core import xp as xpmod


def test_cpu_is_numpy() -> None:
    assert xpmod.get_xp("cpu") is np


def test_unknown_device_rejected() -> None:
    with pytest.raises(ValueError, match="device"):
        xpmod.get_xp("tpu")  # type: ignore[arg-type]


def test_auto_falls_back_to_numpy_without_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xpmod, "_cupy", lambda: None)
    monkeypatch.setattr(xpmod, "_gpu_count", lambda: 0)
    assert xpmod.get_xp("auto") is np
    assert xpmod.array_module(np.zeros(3)) is np


def test_gpu_without_cupy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xpmod, "_cupy", lambda: None)
    monkeypatch.setattr(xpmod, "_gpu_count", lambda: 0)
    with pytest.raises(RuntimeError, match="cupy is not installed"):
        xpmod.get_xp("gpu")


def test_gpu_with_cupy_but_no_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(get_array_module=lambda a: np)
    monkeypatch.setattr(xpmod, "_cupy", lambda: fake)
    monkeypatch.setattr(xpmod, "_gpu_count", lambda: 0)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        xpmod.get_xp("gpu")
    assert xpmod.get_xp("auto") is np


def test_auto_and_gpu_pick_cupy_when_a_device_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(get_array_module=lambda a: np)
    monkeypatch.setattr(xpmod, "_cupy", lambda: fake)
    monkeypatch.setattr(xpmod, "_gpu_count", lambda: 1)
    assert xpmod.get_xp("auto") is fake
    assert xpmod.get_xp("gpu") is fake
    assert xpmod.get_xp("cpu") is np


def test_to_numpy_passes_numpy_through() -> None:
    a = np.arange(4.0)
    assert xpmod.to_numpy(a) is a
    assert isinstance(xpmod.to_numpy([1, 2]), np.ndarray)


def test_no_cupy_or_triton_imported_by_the_algorithm() -> None:
    code = (
        "import sys\n"
        "import smoothguard.core.xp, smoothguard.core.noise, smoothguard.core.kmeans\n"
        "import smoothguard.core.aggregate, smoothguard.core.policy, smoothguard.core.pipeline\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('cupy', 'triton_python_backend_utils', 'tritonclient', 'torch')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
