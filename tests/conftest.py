"""Shared fixtures: a real tritonserver with the rendered cpu repository, started once."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "build"))
# helpers shared by test modules (importlib mode keeps test folders off sys.path)
sys.path.insert(0, str(REPO_ROOT / "tests" / "helpers"))

from smoothguard.serving.server import ServerPorts, TritonServer  # noqa: E402


@dataclass
class RunningServer:
    server: TritonServer
    profile: dict[str, Any]

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.server.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.server.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.ports.metrics}/metrics"


def start_server(
    tmp: Path, overrides: list[str], extra_args: list[str] | None = None
) -> RunningServer:
    from render import render

    mllm = os.environ.get("SMOOTHGUARD_TEST_MLLM")
    if mllm:
        overrides = [*overrides, f"mllm.model_path={mllm}"]
    repo = render("cpu", tmp / "repo", overrides)
    ports = ServerPorts.free()
    server = TritonServer(repo, ports=ports, work_dir=tmp / "server", extra_args=extra_args or [])
    server.start(timeout_s=240)
    return RunningServer(server, json.loads((repo / "profile.json").read_text()))


@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], ModuleType]:
    """Import a script under benchmarks/ (not a package) by file name, a fresh module each call."""

    def load(name: str) -> ModuleType:
        path = REPO_ROOT / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The cpu profile as a user gets it, with a small image limit so oversize is cheap."""
    running = start_server(tmp_path_factory.mktemp("triton"), ["defense.max_image_pixels=262144"])
    try:
        yield running
    finally:
        running.server.stop()


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A tiny random checkpoint of a paper family (llava15, qwen2_5_vl), built once a session
    with build/make_checkpoints.py's code and loaded back from disk like a user's."""
    from smoothguard.synthetic.families import build_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_checkpoint(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def server_ports() -> Callable[[], ServerPorts]:
    """Three free ports for a server a test starts itself."""
    return ServerPorts.free


@pytest.fixture(scope="session")
def start_triton():
    """For tests that need a server with settings of their own."""
    return start_server
