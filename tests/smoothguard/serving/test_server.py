"""The tritonserver command line: the response cache the generate step relies on is there
once, whether a deployment passes its own --cache-config or not; and the free ports a test or
benchmark server gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from smoothguard.serving import server as server_module
from smoothguard.serving.server import RESPONSE_CACHE_ARG, ServerPorts, TritonServer


def cache_flags(server: TritonServer) -> list[str]:
    return [a for a in server.command() if a.startswith("--cache-")]


def test_default_command_enables_the_local_cache(tmp_path: Path) -> None:
    flags = cache_flags(TritonServer(tmp_path / "repo", work_dir=tmp_path / "work"))
    assert RESPONSE_CACHE_ARG in flags
    (directory,) = [f for f in flags if f.startswith("--cache-directory=")]
    assert (Path(directory.split("=", 1)[1]) / "local").is_dir()


def test_a_deployments_own_cache_flag_is_not_doubled(tmp_path: Path) -> None:
    own = "--cache-config=local,size=1048576"
    server = TritonServer(tmp_path / "repo", work_dir=tmp_path / "work", extra_args=[own])
    configs = [f for f in cache_flags(server) if f.startswith("--cache-config")]
    assert configs == [own]


class ReusingSocket:
    """An OS that hands out the lowest port no open socket holds: a port is free again the
    moment its socket closes, which is what made two of three ports collide."""

    held: ClassVar[set[int]] = set()

    def __init__(self) -> None:
        self.port: int | None = None

    def __enter__(self) -> ReusingSocket:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.held.discard(self.port)

    def bind(self, address: tuple[str, int]) -> None:
        self.port = min(p for p in range(40000, 40010) if p not in self.held)
        self.held.add(self.port)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_free_ports_are_distinct_even_when_the_os_reuses_closed_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_module.socket, "socket", ReusingSocket)
    ports = ServerPorts.free()
    assert len({ports.http, ports.grpc, ports.metrics}) == 3
    assert not ReusingSocket.held  # every socket closed again


def test_free_ports_can_be_bound() -> None:
    import socket

    ports = ServerPorts.free()
    for port in (ports.http, ports.grpc, ports.metrics):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
