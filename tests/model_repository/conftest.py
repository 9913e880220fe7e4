"""Load model_repository/<model>/1/model.py with the fake triton_python_backend_utils."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


@pytest.fixture
def pb_utils(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("fake_pb_utils", HERE / "fake_pb_utils.py")
    assert spec and spec.loader
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    # Modules that imported the previous fake must import this one.
    for name in [m for m in sys.modules if m.startswith("smoothguard_triton.")]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return fake


@pytest.fixture
def load_model(pb_utils: ModuleType):
    def load(name: str) -> ModuleType:
        path = REPO_ROOT / "model_repository" / name / "1" / "model.py"
        spec = importlib.util.spec_from_file_location(f"model_{name}", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
