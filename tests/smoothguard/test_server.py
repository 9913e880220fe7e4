"""The tritonserver command line: the response cache the generate step relies on is there
once, whether a deployment passes its own --cache-config or not."""

from __future__ import annotations

from pathlib import Path

from smoothguard.server import RESPONSE_CACHE_ARG, TritonServer


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
