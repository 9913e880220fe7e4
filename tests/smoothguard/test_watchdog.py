"""The stub watchdog's bookkeeping: which stub exits mean a reload, and which do not.

The real thing (a SIGKILLed stub, a reload, requests served again) is
tests/integration/test_faults.py::test_a_killed_stub_comes_back.
"""

from __future__ import annotations

from typing import Any

import pytest

from smoothguard import watchdog
from smoothguard.watchdog import StubWatchdog, stub_model

STUB = "/opt/backends/python/triton_python_backend_stub"


@pytest.mark.parametrize(
    ("cmdline", "model"),
    [
        ([STUB, "/srv/repo/mllm/1/model.py", "false", "2", "...", "mllm_0_0"], "mllm"),
        ([STUB, "/srv/repo/noise_audio/3/model.py", "x"], "noise_audio"),
        (["python", "/srv/repo/mllm/1/model.py"], None),  # not a stub
        ([STUB, "/srv/repo/model.py"], None),  # no <model>/<version>/ folders
        ([], None),
    ],
)
def test_stub_model_reads_the_model_from_the_command_line(
    cmdline: list[str], model: str | None
) -> None:
    assert stub_model(cmdline) == model


class Harness:
    """A watchdog over a scripted process table, with the HTTP calls recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stubs: dict[int, str]) -> None:
        self.stubs = dict(stubs)
        self.ready = {m: True for m in stubs.values()}
        self.reloads: list[str] = []
        monkeypatch.setattr(watchdog, "live_stubs", lambda pid: dict(self.stubs))
        self.dog = StubWatchdog(1, "http://127.0.0.1:1")
        self.dog._known = dict(self.stubs)
        monkeypatch.setattr(self.dog, "_model_ready", lambda m: self.ready.get(m, False))
        monkeypatch.setattr(self.dog, "_reload", self._reload)
        self.next_pid = 100

    def _reload(self, model: str) -> Any:
        self.reloads.append(model)
        self.next_pid += 1
        self.stubs[self.next_pid] = model  # the new instance's stub


def test_a_dead_stub_reloads_its_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, {10: "mllm", 11: "embedder"})
    assert h.dog.check() == []
    del h.stubs[10]
    assert h.dog.check() == ["mllm"] and h.reloads == ["mllm"]
    assert h.dog.check() == [] and h.dog.restarts == {"mllm": 1}


def test_a_stub_killed_right_after_a_reload_is_still_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch, {10: "mllm"})
    del h.stubs[10]
    h.dog.check()
    new = max(h.stubs)
    del h.stubs[new]  # before any further poll
    assert h.dog.check() == ["mllm"] and h.dog.restarts == {"mllm": 2}


def test_replaced_instances_exiting_after_a_reload_are_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch, {10: "mllm", 11: "mllm"})  # two instances
    del h.stubs[10]
    assert h.dog.check() == ["mllm"]
    del h.stubs[11]  # Triton stops the replaced instance's stub on purpose
    assert h.dog.check() == [] and h.reloads == ["mllm"]


def test_unloaded_models_and_a_stopping_server_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch, {10: "mllm", 11: "embedder"})
    h.ready["mllm"] = False  # unloaded by an operator
    del h.stubs[10]
    assert h.dog.check() == []
    h.dog.stop()
    del h.stubs[11]
    assert h.dog.check() == [] and h.reloads == []


def test_the_server_runs_in_explicit_mode_when_watched(tmp_path: Any) -> None:
    from smoothguard.server import TritonServer

    def command(**kwargs: Any) -> list[str]:
        return TritonServer(tmp_path / "repo", work_dir=tmp_path / "w", **kwargs).command()

    watched = command(watchdog=True)
    assert "--model-control-mode=explicit" in watched and "--load-model=*" in watched
    assert not any(a.startswith("--model-control-mode") for a in command())
    chosen = command(watchdog=True, extra_args=["--model-control-mode=explicit"])
    assert chosen.count("--model-control-mode=explicit") == 1
    with pytest.raises(ValueError, match="explicit"):
        command(watchdog=True, extra_args=["--model-control-mode=none"])


def test_supervise_refuses_a_server_it_could_not_reload_models_on() -> None:
    with pytest.raises(ValueError, match="explicit"):
        watchdog.supervise(["tritonserver", "--model-repository=/m"])
    with pytest.raises(ValueError, match="explicit"):
        watchdog.supervise(["tritonserver", "--model-control-mode=none"])
    with pytest.raises(SystemExit):
        watchdog.main(["--"])  # no command
    with pytest.raises(SystemExit):
        watchdog.main(["--interval", "0", "--", "tritonserver"])
    with pytest.raises(ValueError, match="interval_s"):
        StubWatchdog(1, "http://127.0.0.1:1", interval_s=-1)


def test_http_port_is_read_from_the_server_flags() -> None:
    assert watchdog._flag(["tritonserver", "--http-port=9000"], "http-port", "8000") == "9000"
    assert watchdog._flag(["tritonserver", "--http-port", "9001"], "http-port", "8000") == "9001"
    assert watchdog._flag(["tritonserver"], "http-port", "8000") == "8000"
