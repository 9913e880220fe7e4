"""Bring back Python-backend models whose stub process died, without restarting the server.

Triton 2.51's Python backend never restarts a stub that was killed (OOM killer, a segfault in
a native library, an operator's `kill`): the model still reports READY and every later request
to that instance fails with "Stub process '<instance>' is not healthy". The watchdog watches
the server's stub processes and, when one exits while its model is loaded (READY in the
repository index), reloads that model through the model-repository API. The reload loads a
fresh instance beside the broken one and swaps it in (Triton's usual reload: no window where
the model is missing), so only requests that were on the dead stub fail.

A plain `load_model(name)` is a no-op for a model whose files have not changed, so the
watchdog passes the model's own config back with one parameter changed
(`watchdog_generation`), which makes Triton load a new instance. This needs
`--model-control-mode=explicit` (`TritonServer(watchdog=True)` sets it, with `--load-model=*`);
on a server with restricted APIs give it the admin header (`headers`). It talks to the local
HTTP endpoint, which stays plain HTTP when gRPC is served over TLS.

What a reload cannot undo (Triton 2.51, python_backend r24.10): every request that reaches
the dead stub fails in ModelInstanceExecute without deleting the response factory it made for
the stub (TRITONBACKEND_ResponseFactoryNew in SaveRequestsToSharedMemory), and a factory holds
a reference to the model. So after one such request the replaced model is never destroyed:
its instances are never finalised, the dead stub stays a zombie (only the instance's
destructor waitpid()s it) and its sibling stubs keep running until tritonserver exits.
Unload+load, a touched config or waiting change nothing (the reference is leaked), and stubs
ignore SIGTERM. So, `leak_grace_s` after a reload, the watchdog compares the model's stubs with
its configured instances: replaced stubs still running are SIGKILLed once idle (their memory
comes back; nothing can reach them any more), and if stubs or zombies are left over it calls
`on_leak` with one line, for the supervisor to restart tritonserver, the only way to reap them.

Stubs are found as the server's child processes running `triton_python_backend_stub` with a
`.../<model>/<version>/model.py` argument (how the Python backend launches them); a zombie has
no command line any more, so the watchdog remembers which model each stub served.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import psutil

log = logging.getLogger("smoothguard.serving.watchdog")

STUB_NAME = "triton_python_backend_stub"
GENERATION_PARAMETER = "watchdog_generation"
# Errors of one HTTP call to a server that is busy, restarting or gone.
HTTP_ERRORS = (urllib.error.URLError, OSError, ValueError)


def http_call(
    base_url: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Any:
    """One call to Triton's HTTP API (local, plain HTTP even when gRPC uses TLS)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base_url}{path}", data=data, method=method, headers=dict(headers or {})
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def stub_model(cmdline: list[str]) -> str | None:
    """The model a stub serves, from its command line (None for other processes)."""
    if not cmdline or PurePath(cmdline[0]).name != STUB_NAME:
        return None
    for arg in cmdline[1:]:
        path = PurePath(arg)
        if path.name == "model.py" and len(path.parts) >= 3 and path.parts[-2].isdigit():
            return path.parts[-3]
    return None


def _children(server_pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def live_stubs(server_pid: int) -> dict[int, str]:
    """pid -> model for every running (not zombie) stub under the server process."""
    found: dict[int, str] = {}
    for child in _children(server_pid):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            model = stub_model(child.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if model is not None:
            found[child.pid] = model
    return found


def zombie_stubs(server_pid: int) -> set[int]:
    """pids of stubs that exited and that the server has not reaped: only the destructor of
    their model instance waitpid()s them, so one that stays is an instance never released."""
    found: set[int] = set()
    for child in _children(server_pid):
        try:
            # A zombie keeps only its 15-character kernel name, no command line.
            if child.status() == psutil.STATUS_ZOMBIE and STUB_NAME.startswith(child.name()):
                found.add(child.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (None if it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None
    return float(times.user + times.system)


def kill_stub(pid: int, model: str) -> bool:
    """SIGKILL a stub (stubs ignore SIGTERM) if the pid is still a stub of `model`."""
    try:
        proc = psutil.Process(pid)
        if stub_model(proc.cmdline()) != model:
            return False
        proc.kill()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False
    return True


def configured_instances(config: Mapping[str, Any]) -> int:
    """How many instances (so Python stubs) a model config asks for: the instance groups'
    counts summed, a KIND_GPU group's count once per listed GPU (Triton's returned config lists
    them); an ensemble has none; no group means Triton's default of one."""
    if config.get("platform") == "ensemble" or config.get("backend") == "ensemble":
        return 0
    groups = config.get("instance_group") or []
    if not groups:
        return 1
    total = 0
    for group in groups:
        count = int(group.get("count", 1))
        if group.get("kind") == "KIND_GPU":
            count *= max(1, len(group.get("gpus") or []))
        total += count
    return total


@dataclass
class _Retirement:
    """The stubs a reload replaced, checked `leak_grace_s` later."""

    due: float  # clock time of the first check
    pids: set[int]  # the model's live stubs just before the reload
    cpu: dict[int, tuple[float, float]] = field(default_factory=dict)  # pid -> (clock, cpu s)
    state: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (replaced live, zombies)
    since: float = 0.0  # clock time `state` was first seen


@dataclass
class StubWatchdog:
    """Polls the server's stubs every `interval_s` and reloads the models that lost one."""

    server_pid: int
    http_url: str  # e.g. http://127.0.0.1:8000
    interval_s: float = 2.0
    # e.g. {"smoothguard-admin-key": KEY} when the model-repository API is restricted
    headers: Mapping[str, str] | None = None
    reload_timeout_s: float = 600.0
    on_restart: Callable[[str], None] | None = None
    # After a reload, how long Triton gets to release the replaced instances before their
    # stubs count as leaked (a released one goes in seconds, once its requests finish).
    leak_grace_s: float = 30.0
    # The verdict waits until the replaced stubs are idle and their count and the zombies
    # have not changed for `settle_s` (Triton finalises a released model's instances one by
    # one, ~1 s each), but no longer than `busy_grace_s` past `leak_grace_s`: a busy replaced
    # stub is finishing a request from before the reload.
    settle_s: float = 10.0
    busy_grace_s: float = 60.0
    # Below this share of one core since the last poll a replaced stub counts as idle.
    idle_cpu_share: float = 0.05
    # Called with one line when a reload left stubs or zombies behind (restart tritonserver).
    on_leak: Callable[[str], None] | None = None
    # SIGKILL replaced stubs Triton did not stop (they can serve nothing; frees their memory).
    kill_retired: bool = True
    clock: Callable[[], float] = time.monotonic
    restarts: dict[str, int] = field(default_factory=dict)
    leaks: dict[str, int] = field(default_factory=dict)
    _known: dict[int, str] = field(default_factory=dict)
    _retired: set[int] = field(default_factory=set)
    _names: dict[int, str] = field(default_factory=dict)  # every stub seen, zombies included
    _pending: dict[str, _Retirement] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {self.interval_s}")
        if min(self.leak_grace_s, self.settle_s, self.busy_grace_s) < 0:
            raise ValueError("leak_grace_s, settle_s and busy_grace_s must not be negative")

    def start(self) -> StubWatchdog:
        self._known = live_stubs(self.server_pid)
        self._names = dict(self._known)
        self._thread = threading.Thread(target=self._run, name="stub-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before the server shuts down, when stubs exit on purpose)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watchdog must outlive one bad poll
                log.exception("stub watchdog poll failed")

    def check(self) -> list[str]:
        """One poll: the models reloaded because a stub of theirs is gone."""
        live = live_stubs(self.server_pid)
        zombies = zombie_stubs(self.server_pid)
        self._names = {p: m for p, m in self._names.items() if p in zombies} | live
        gone = {pid: m for pid, m in self._known.items() if pid not in live}
        self._known = live
        reloaded = []
        for model in sorted({m for pid, m in gone.items() if pid not in self._retired}):
            if self._stop.is_set() or not self._model_ready(model):
                continue  # unloaded on purpose, or the server is stopping
            pids = sorted(p for p, m in gone.items() if m == model)
            log.warning("stub of model %r exited (pids %s); reloading the model", model, pids)
            self._reload(model)
            # The model's other stubs belong to the instances the reload replaces: Triton
            # stops them once the new ones serve, which is no reason to reload again. The new
            # instances' stubs are watched from now, not from the next poll.
            replaced = {p for p, m in live.items() if m == model}
            self._retired |= replaced
            self._retire(model, replaced)
            fresh = live_stubs(self.server_pid)
            self._known |= fresh
            self._names |= fresh
            self.restarts[model] = self.restarts.get(model, 0) + 1
            reloaded.append(model)
            if self.on_restart is not None:
                self.on_restart(model)
        self._retired &= set(live)
        if not self._stop.is_set():
            for model in sorted(self._pending):
                self._check_released(model, live, zombies)
        return reloaded

    def _retire(self, model: str, replaced: set[int]) -> None:
        """Check `leak_grace_s` from now that Triton released what the reload replaced."""
        earlier = self._pending.get(model)
        pids = replaced | (earlier.pids if earlier else set())
        self._pending[model] = _Retirement(self.clock() + self.leak_grace_s, pids)

    def _check_released(self, model: str, live: dict[int, str], zombies: set[int]) -> None:
        retirement = self._pending[model]
        now = self.clock()
        leftover = sorted(p for p in retirement.pids if p in live)
        dead = sorted(p for p in zombies if self._names.get(p) == model)
        busy = [p for p in leftover if self._busy(p, retirement, now)]
        if (tuple(leftover), tuple(dead)) != retirement.state:
            retirement.state, retirement.since = (tuple(leftover), tuple(dead)), now
        if now < retirement.due:
            return
        stubs = sum(1 for m in live.values() if m == model)
        try:
            configured = self.configured_instances(model)
        except HTTP_ERRORS as exc:
            log.warning("cannot read the config of %r (%s); checking it next poll", model, exc)
            return
        if stubs <= configured and not dead:
            del self._pending[model]  # released: Triton stopped and reaped the old stubs
            return
        settling = busy or now - retirement.since < self.settle_s
        if settling and now < retirement.due + self.busy_grace_s:
            return
        killed = [p for p in leftover if self.kill_retired and kill_stub(p, model)]
        del self._pending[model]
        self.leaks[model] = self.leaks.get(model, 0) + 1
        message = (
            f"stub leak after reloading {model!r}: {stubs} live stubs for {configured} "
            f"configured instances and {len(dead)} zombie stubs {dead} "
            f"{now - retirement.due + self.leak_grace_s:.0f} s later; killed {len(killed)} "
            f"replaced stubs {killed}; Triton 2.51 never releases a replaced instance once a "
            "request failed on its dead stub, and only a tritonserver restart reaps its stubs"
        )
        log.error("%s", message)
        if self.on_leak is not None:
            self.on_leak(message)

    def _busy(self, pid: int, retirement: _Retirement, now: float) -> bool:
        """Did a replaced stub use more than `idle_cpu_share` of a core since the last poll?"""
        cpu = cpu_seconds(pid)
        if cpu is None:
            return False
        last = retirement.cpu.get(pid)
        retirement.cpu[pid] = (now, cpu)
        if last is None:
            return True  # not measured yet: give it one poll
        wall = max(now - last[0], 1e-3)
        return (cpu - last[1]) / wall > self.idle_cpu_share

    def configured_instances(self, model: str) -> int:
        """The instances the model's config asks for (the Python stubs it should have)."""
        return configured_instances(self._call("GET", f"/v2/models/{model}/config"))

    def stub_census(self) -> dict[str, tuple[int, int, int]]:
        """model -> (live stubs, configured instances, zombie stubs), for every model that has
        stubs or zombies and every loaded Python model; zombies whose model is unknown (dead
        before the watchdog started) count under "?"."""
        live = live_stubs(self.server_pid)
        zombies = zombie_stubs(self.server_pid)
        names = self._names | live
        running = Counter(live.values())
        dead = Counter(names.get(p, "?") for p in zombies)
        configured: dict[str, int] = {}
        try:
            index = self._call("POST", "/v2/repository/index", {}) or []
        except HTTP_ERRORS:
            index = []
        loaded = {m["name"] for m in index if m.get("state") == "READY" and m.get("name")}
        for model in sorted(loaded | set(running) | set(dead)):
            try:
                config = None if model == "?" else self._call("GET", f"/v2/models/{model}/config")
            except HTTP_ERRORS:
                config = None
            has_stubs = model in running or model in dead
            if config is None and has_stubs:
                configured[model] = 0
            elif config is not None and (has_stubs or config.get("backend") == "python"):
                configured[model] = configured_instances(config)
        return {m: (running[m], n, dead[m]) for m, n in configured.items()}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return http_call(
            self.http_url, method, path, body, headers=self.headers, timeout_s=self.reload_timeout_s
        )

    def _model_ready(self, model: str) -> bool:
        """Loaded and meant to serve, by the repository index (model lifecycle state), not by
        the readiness endpoint: newer Python backends report a model with a dead stub as not
        ready, and that is exactly the model to reload; an unloaded one is UNAVAILABLE."""
        try:
            index = self._call("POST", "/v2/repository/index", {})
        except HTTP_ERRORS:
            return False
        return any(m.get("name") == model and m.get("state") == "READY" for m in index or [])

    def _reload(self, model: str) -> None:
        config = self._call("GET", f"/v2/models/{model}/config")
        generation = self.restarts.get(model, 0) + 1
        config.setdefault("parameters", {})[GENERATION_PARAMETER] = {
            "string_value": str(generation)
        }
        body = {"parameters": {"config": json.dumps(config)}}
        self._call("POST", f"/v2/repository/models/{model}/load", body)
        log.warning("model %r reloaded with a fresh stub (restart %d)", model, generation)


def main(argv: Sequence[str] | None = None) -> int:
    """Deprecated entry point: `python -m smoothguard.watchdog` is the supervisor now."""
    import warnings

    from smoothguard.serving.supervisor import main as supervisor_main

    warnings.warn(
        "python -m smoothguard.watchdog is deprecated; use"
        " python -m smoothguard.serving.supervisor",
        DeprecationWarning,
        stacklevel=2,
    )
    return supervisor_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
