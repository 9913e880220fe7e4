"""Every stub caps numpy's BLAS pool: idle OpenBLAS workers spin on the cores the models need."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from threadpoolctl import ThreadpoolController, threadpool_info

from smoothguard.core.settings import DefenseSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted((REPO_ROOT / "model_repository").rglob("model.py"))


@pytest.fixture
def restore_blas() -> Iterator[None]:
    controller = ThreadpoolController()
    before = {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()}
    yield
    for pool in controller.lib_controllers:
        pool.set_num_threads(before.get(pool.filepath, pool.num_threads))


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_initialize_leaves_one_blas_thread(
    load_model: Any, pb_utils: ModuleType, restore_blas: None
) -> None:
    ThreadpoolController().limit(limits=2, user_api="blas")
    if not blas_threads() or max(blas_threads()) < 2:
        pytest.skip("numpy's BLAS runs one thread here already")
    model = load_model("aggregate").TritonPythonModel()
    model.initialize(pb_utils.model_args(DefenseSettings().to_parameters() | {"device": "cpu"}))
    assert blas_threads() == [1] * len(blas_threads())


@pytest.mark.parametrize("path", MODELS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_model_limits_threads(path: Path) -> None:
    tree = ast.parse(path.read_text())
    (initialize,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "initialize"
    ]
    calls = [
        node.func.id
        for node in ast.walk(initialize)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]
    assert "limit_threads" in calls, f"{path} does not call limit_threads in initialize"
