"""Bring back Python-backend models whose stub process died, without restarting the server.

Triton 2.51's Python backend never restarts a stub that was killed (OOM killer, a segfault in
a native library, an operator's `kill`): the model still reports READY and every later request
to that instance fails with "Stub process '<instance>' is not healthy". The watchdog watches
the server's stub processes and, when one exits while its model is READY, reloads that model
through the model-repository API. The reload loads a fresh instance beside the broken one and
swaps it in (Triton's usual reload: no window where the model is missing), so only requests
that were on the dead stub fail.

A plain `load_model(name)` is a no-op for a model whose files have not changed, so the
watchdog passes the model's own config back with one parameter changed
(`watchdog_generation`), which makes Triton load a new instance. This needs
`--model-control-mode=explicit` (`TritonServer(watchdog=True)` sets it, with `--load-model=*`);
on a server with restricted APIs give it the admin header (`headers`). It talks to the local
HTTP endpoint, which stays plain HTTP when gRPC is served over TLS.

Stubs are found as the server's child processes running `triton_python_backend_stub` with a
`.../<model>/<version>/model.py` argument (how the Python backend launches them).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import psutil

log = logging.getLogger("smoothguard.watchdog")

STUB_NAME = "triton_python_backend_stub"
GENERATION_PARAMETER = "watchdog_generation"


def stub_model(cmdline: list[str]) -> str | None:
    """The model a stub serves, from its command line (None for other processes)."""
    if not cmdline or PurePath(cmdline[0]).name != STUB_NAME:
        return None
    for arg in cmdline[1:]:
        path = PurePath(arg)
        if path.name == "model.py" and len(path.parts) >= 3 and path.parts[-2].isdigit():
            return path.parts[-3]
    return None


def live_stubs(server_pid: int) -> dict[int, str]:
    """pid -> model for every running (not zombie) stub under the server process."""
    found: dict[int, str] = {}
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            model = stub_model(child.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if model is not None:
            found[child.pid] = model
    return found


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
    restarts: dict[str, int] = field(default_factory=dict)
    _known: dict[int, str] = field(default_factory=dict)
    _retired: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> StubWatchdog:
        self._known = live_stubs(self.server_pid)
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
            self._retired.update(p for p, m in live.items() if m == model)
            self._known |= live_stubs(self.server_pid)
            self.restarts[model] = self.restarts.get(model, 0) + 1
            reloaded.append(model)
            if self.on_restart is not None:
                self.on_restart(model)
        self._retired &= set(live)
        return reloaded

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call to Triton's HTTP API (local, plain HTTP even when gRPC uses TLS)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.http_url}{path}", data=data, method=method, headers=dict(self.headers or {})
        )
        with urllib.request.urlopen(request, timeout=self.reload_timeout_s) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def _model_ready(self, model: str) -> bool:
        try:
            self._call("GET", f"/v2/models/{model}/ready")
        except (urllib.error.URLError, OSError):  # HTTPError (not ready) is a URLError
            return False
        return True

    def _reload(self, model: str) -> None:
        config = self._call("GET", f"/v2/models/{model}/config")
        generation = self.restarts.get(model, 0) + 1
        config.setdefault("parameters", {})[GENERATION_PARAMETER] = {
            "string_value": str(generation)
        }
        body = {"parameters": {"config": json.dumps(config)}}
        self._call("POST", f"/v2/repository/models/{model}/load", body)
        log.warning("model %r reloaded with a fresh stub (restart %d)", model, generation)
