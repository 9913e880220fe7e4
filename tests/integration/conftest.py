"""Fixtures of the reliability tests: a rendered cpu repository with test-only faulty models,
and helpers to find the server's Python backend stub processes."""

from __future__ import annotations

import shutil
import string
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from smoothguard.serving.server import ServerPorts, TritonServer
from smoothguard.serving.watchdog import live_stubs

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# (model name, fake_mllm mode, delay_s): the MLLMs the faulty generate copies call.
FAKE_MLLMS = (("raising_mllm", "raise", "0"), ("slow_mllm", "slow", "8"))
# Copies of the real generate step pointed at the fakes, with a short BLS timeout.
FAULTY_GENERATES = (("generate_raising", "raising_mllm"), ("generate_slow", "slow_mllm"))
GENERATE_TIMEOUT_S = 2


def add_fault_models(repo: Path) -> Path:
    """Add the test-only models to a rendered repository (production code, faulty MLLMs)."""
    template = string.Template((FIXTURES / "fake_mllm" / "config.pbtxt.tmpl").read_text())
    for name, mode, delay in FAKE_MLLMS:
        target = repo / name
        shutil.copytree(FIXTURES / "fake_mllm" / "1", target / "1")
        (target / "config.pbtxt").write_text(
            template.substitute(name=name, mode=mode, delay_s=delay)
        )
    for name, mllm in FAULTY_GENERATES:
        target = repo / name
        shutil.copytree(repo / "generate", target)
        config = text_format.Parse(
            (target / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        config.name = name
        config.parameters["mllm_model"].string_value = mllm
        config.parameters["mllm_timeout_s"].string_value = str(GENERATE_TIMEOUT_S)
        config.instance_group[0].count = 1
        (target / "config.pbtxt").write_text(text_format.MessageToString(config))
    return repo


def stub_processes(server_pid: int, model: str) -> list[psutil.Process]:
    """The live Python backend stubs of one model (as the watchdog finds them)."""
    return [psutil.Process(p) for p, m in live_stubs(server_pid).items() if m == model]


@pytest.fixture(scope="module")
def fault_server(
    tmp_path_factory: pytest.TempPathFactory, server_ports: Callable[[], ServerPorts]
) -> Iterator[TritonServer]:
    """The cpu repository plus the test-only faulty models, on fixed ports so that tests may
    stop and restart it (one per test module)."""
    from render import render

    tmp = tmp_path_factory.mktemp("faults")
    repo = add_fault_models(render("cpu", tmp / "repo", ["defense.max_image_pixels=262144"]))
    ports = server_ports()
    server = TritonServer(
        repo, ports=ports, work_dir=tmp / "server", exit_timeout_s=30, watchdog=True
    )
    server.start(timeout_s=240)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def find_stubs() -> Callable[[int, str], list[psutil.Process]]:
    return stub_processes
