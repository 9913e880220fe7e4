"""The stub watchdog's bookkeeping: which stub exits mean a reload, and which do not; and,
after a reload, whether Triton released the replaced instance or leaked its stubs.

The real thing (a SIGKILLed stub, a reload, requests served again) is
tests/integration/test_faults.py::test_a_killed_stub_comes_back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from smoothguard.serving import watchdog
from smoothguard.serving.watchdog import (
    STUB_NAME,
    StubWatchdog,
    configured_instances,
    cpu_seconds,
    kill_stub,
    live_stubs,
    stub_model,
    zombie_stubs,
)

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
    """A watchdog over a scripted process table and clock, with the HTTP calls recorded.

    A reload starts the configured number of new stubs; the replaced ones stay until a test
    releases them (as Triton does) or the watchdog kills them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stubs: dict[int, str]) -> None:
        self.stubs = dict(stubs)
        self.names = dict(stubs)
        self.zombies: set[int] = set()
        self.cpu: dict[int, float] = {}  # CPU seconds so far, 0 if absent
        self.configured = Counter(stubs.values())
        self.ready = {m: True for m in stubs.values()}
        self.reloads: list[str] = []
        self.killed: list[int] = []
        self.leaks: list[str] = []
        self.now = 0.0
        monkeypatch.setattr(watchdog, "live_stubs", lambda pid: dict(self.stubs))
        monkeypatch.setattr(watchdog, "zombie_stubs", lambda pid: set(self.zombies))
        monkeypatch.setattr(watchdog, "cpu_seconds", self._cpu)
        monkeypatch.setattr(watchdog, "kill_stub", self._kill)
        self.dog = StubWatchdog(
            1, "http://127.0.0.1:1", clock=lambda: self.now, on_leak=self.leaks.append
        )
        self.dog._known = dict(self.stubs)
        self.dog._names = dict(self.stubs)
        monkeypatch.setattr(self.dog, "_model_ready", lambda m: self.ready.get(m, False))
        monkeypatch.setattr(self.dog, "_reload", self._reload)
        monkeypatch.setattr(self.dog, "configured_instances", lambda m: self.configured[m])
        self.next_pid = 100

    def _reload(self, model: str) -> Any:
        self.reloads.append(model)
        for _ in range(self.configured[model]):
            self.next_pid += 1
            self.stubs[self.next_pid] = self.names[self.next_pid] = model  # new instances

    def _cpu(self, pid: int) -> float | None:
        return self.cpu.get(pid, 0.0) if pid in self.stubs else None

    def _kill(self, pid: int, model: str) -> bool:
        self.killed.append(pid)
        self.crash(pid)
        return True

    def crash(self, pid: int) -> None:
        """The stub exits; the server has not reaped it (yet)."""
        del self.stubs[pid]
        self.zombies.add(pid)

    def release(self, *pids: int) -> None:
        """Triton finalises replaced instances: their stubs stop and are reaped."""
        for pid in pids:
            self.stubs.pop(pid, None)
            self.zombies.discard(pid)

    def poll(self, at: float) -> list[str]:
        self.now = at
        return self.dog.check()


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


@pytest.mark.parametrize(
    ("config", "count"),
    [
        ({"backend": "python", "instance_group": [{"count": 2, "kind": "KIND_CPU"}]}, 2),
        (
            {
                "instance_group": [
                    {"count": 1, "kind": "KIND_CPU"},
                    {"count": 2, "kind": "KIND_GPU", "gpus": [0, 1]},  # per listed GPU
                    {"count": 3, "kind": "KIND_MODEL"},
                ]
            },
            8,
        ),
        ({"backend": "python"}, 1),  # Triton's default: one instance
        ({"platform": "ensemble", "ensemble_scheduling": {"step": []}}, 0),
    ],
)
def test_configured_instances_sums_the_instance_groups(config: dict[str, Any], count: int) -> None:
    assert configured_instances(config) == count


def test_a_reload_that_triton_releases_is_not_a_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, {10: "noise", 11: "noise"})
    h.crash(10)
    assert h.poll(0) == ["noise"]
    h.release(10, 11)  # no request reached the dead stub: the old instances are finalised
    h.poll(31)
    assert not h.dog._pending and h.leaks == [] and h.killed == []


def test_a_leaked_reload_kills_the_replaced_stubs_and_asks_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch, {10: "noise", 11: "noise", 20: "mllm"})
    h.crash(10)
    assert h.poll(0) == ["noise"]  # stubs 101 and 102 replace 10 and 11
    h.poll(10)
    assert h.leaks == [] and h.killed == []  # Triton gets leak_grace_s
    assert h.poll(31) == [] and h.killed == [11]  # killed, not reloaded again
    [message] = h.leaks
    assert "'noise'" in message and "3 live stubs for 2 configured" in message
    assert "1 zombie stubs [10]" in message and "stub" in message
    assert h.dog.leaks == {"noise": 1}
    assert h.poll(41) == [] and h.poll(80) == [] and len(h.leaks) == 1
    assert h.reloads == ["noise"] and sorted(h.stubs) == [20, 101, 102]


def test_without_kill_retired_the_leak_is_only_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, {10: "noise", 11: "noise"})
    h.dog.kill_retired = False
    h.crash(10)
    h.poll(0)
    h.poll(31)
    assert h.killed == [] and len(h.leaks) == 1 and 11 in h.stubs


def test_a_replaced_stub_still_computing_gets_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that was in flight at the swap finishes on the replaced instance."""
    h = Harness(monkeypatch, {10: "mllm", 11: "mllm"})
    h.crash(10)
    h.poll(0)
    for at in (10, 20, 30, 40):
        h.cpu[11] = at / 2  # half a core
        h.poll(at)
    assert h.killed == [] and h.leaks == []
    h.poll(50)  # idle since 40
    assert h.killed == [11] and len(h.leaks) == 1


def test_a_replaced_stub_busy_for_ever_is_killed_after_busy_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch, {10: "mllm", 11: "mllm"})
    h.crash(10)
    h.poll(0)
    for at in range(10, 81, 10):
        h.cpu[11] = float(at)
        h.poll(at)
    assert h.killed == []
    h.cpu[11] = 90.0
    h.poll(90)  # leak_grace_s + busy_grace_s (30 + 60) are over
    assert h.killed == [11] and len(h.leaks) == 1


def test_old_instances_finalised_one_by_one_are_not_a_leak(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Triton finalises a released model's instances in turn (~1 s each, more on a busy
    machine): while stubs keep going away, the verdict waits for `settle_s` of no change."""
    h = Harness(monkeypatch, {10: "generate", 11: "generate", 12: "generate"})
    h.crash(10)
    h.poll(0)
    h.poll(28)
    h.release(11)
    h.poll(29)
    h.poll(31)
    h.poll(35)
    assert h.killed == [] and h.leaks == []
    h.release(10, 12)
    h.poll(37)
    assert not h.dog._pending and h.killed == [] and h.leaks == []


def test_a_second_crash_during_the_grace_restarts_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch, {10: "embedder"})
    h.crash(10)
    h.poll(0)  # 101 replaces 10
    h.crash(101)
    assert h.poll(20) == ["embedder"]  # 102 replaces 101
    h.poll(31)
    assert h.leaks == []  # the grace counts from the second reload
    h.poll(51)
    [message] = h.leaks
    assert "1 live stubs for 1 configured" in message and "2 zombie stubs [10, 101]" in message


def test_stub_census_counts_live_configured_and_zombie_stubs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch, {10: "noise", 11: "noise", 12: "noise", 13: "noise"})
    h.crash(13)  # a zombie the watchdog saw alive
    h.zombies.add(99)  # died before the watchdog started: its model is unknown
    configs = {
        "noise": {"backend": "python", "instance_group": [{"count": 2, "kind": "KIND_CPU"}]},
        "embedder": {"backend": "python", "instance_group": [{"count": 1, "kind": "KIND_CPU"}]},
        "smoothguard": {"platform": "ensemble"},
    }

    def call(method: str, path: str, body: Any = None) -> Any:
        if path == "/v2/repository/index":
            return [{"name": m, "state": "READY"} for m in configs] + [
                {"name": "old", "state": "UNAVAILABLE"}
            ]
        return configs[path.split("/")[3]]

    monkeypatch.setattr(h.dog, "_call", call)
    assert h.dog.stub_census() == {"noise": (3, 2, 1), "embedder": (0, 1, 0), "?": (0, 0, 1)}


def test_leak_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="leak_grace_s"):
        StubWatchdog(1, "http://127.0.0.1:1", leak_grace_s=-1)


@pytest.fixture
def fake_stub(tmp_path: Path) -> Any:
    """Start processes that look like stubs: a shell copied to the stub's name, with a
    `<model>/1/model.py` argument, as children of this test process."""
    shell = tmp_path / STUB_NAME
    shutil.copy("/bin/sh", shell)
    started: list[subprocess.Popen[bytes]] = []

    def start(script: str, model: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([str(shell), "-c", script, f"/repo/{model}/1/model.py"])
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_live_and_zombie_stubs_of_a_real_process_table(fake_stub: Any) -> None:
    running = fake_stub("sleep 30; :", "noise")
    exited = fake_stub("exit 0", "mllm")  # not waited for: a zombie of this process
    deadline = time.monotonic() + 10
    while exited.pid not in zombie_stubs(os.getpid()):
        assert time.monotonic() < deadline, "the exited stub never became a zombie"
        time.sleep(0.05)
    stubs = live_stubs(os.getpid())
    assert stubs.get(running.pid) == "noise" and exited.pid not in stubs
    assert running.pid not in zombie_stubs(os.getpid())
    assert cpu_seconds(running.pid) is not None
    assert not kill_stub(running.pid, "mllm")  # not a stub of that model: left alone
    assert kill_stub(running.pid, "noise")
    assert running.wait(10) == -9
    assert not kill_stub(running.pid, "noise") and cpu_seconds(running.pid) is None


def test_the_server_runs_in_explicit_mode_when_watched(tmp_path: Any) -> None:
    from smoothguard.serving.server import TritonServer

    def command(**kwargs: Any) -> list[str]:
        return TritonServer(tmp_path / "repo", work_dir=tmp_path / "w", **kwargs).command()

    watched = command(watchdog=True)
    assert "--model-control-mode=explicit" in watched and "--load-model=*" in watched
    assert not any(a.startswith("--model-control-mode") for a in command())
    chosen = command(watchdog=True, extra_args=["--model-control-mode=explicit"])
    assert chosen.count("--model-control-mode=explicit") == 1
    with pytest.raises(ValueError, match="explicit"):
        command(watchdog=True, extra_args=["--model-control-mode=none"])


def test_the_watchdog_refuses_a_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        StubWatchdog(1, "http://127.0.0.1:1", interval_s=-1)
