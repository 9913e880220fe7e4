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

Stubs are found as the server's child processes running `triton_python_backend_stub` with a
`.../<model>/<version>/model.py` argument (how the Python backend launches them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import psutil

log = logging.getLogger("smoothguard.watchdog")

STUB_NAME = "triton_python_backend_stub"
GENERATION_PARAMETER = "watchdog_generation"


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

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {self.interval_s}")

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
        return http_call(
            self.http_url, method, path, body, headers=self.headers, timeout_s=self.reload_timeout_s
        )

    def _model_ready(self, model: str) -> bool:
        """Loaded and meant to serve, by the repository index (model lifecycle state), not by
        the readiness endpoint: newer Python backends report a model with a dead stub as not
        ready, and that is exactly the model to reload; an unloaded one is UNAVAILABLE."""
        try:
            index = self._call("POST", "/v2/repository/index", {})
        except (urllib.error.URLError, OSError, ValueError):
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


def _flag(args: Sequence[str], name: str, default: str) -> str:
    """The value of `--name=value` or `--name value` in a tritonserver command line."""
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return default


def supervise(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    interval_s: float = 2.0,
    start_timeout_s: float = 1800.0,
    drain_timeout_s: float = 30.0,
    stop_timeout_s: float = 60.0,
) -> int:
    """Run tritonserver (`command`) as a child with the stub watchdog, until it exits or this
    process gets SIGTERM/SIGINT. Then the requests inside the ensembles are waited for (up to
    `drain_timeout_s`, see EnsembleDrain) before SIGTERM goes to tritonserver."""
    modes = [a for a in command if a.startswith("--model-control-mode")]
    if modes != ["--model-control-mode=explicit"]:
        raise ValueError(
            "the stub watchdog reloads models: run tritonserver with "
            "--model-control-mode=explicit --load-model=*"
        )
    port = _flag(command, "http-port", "8000")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    child = subprocess.Popen(list(command), env=None if env is None else dict(env))
    ready_url = f"http://127.0.0.1:{port}/v2/health/ready"
    deadline = time.monotonic() + start_timeout_s
    dog: StubWatchdog | None = None
    drain = EnsembleDrain(f"http://127.0.0.1:{port}", headers)
    while not stopping.wait(1.0):
        if child.poll() is not None:
            log.error("tritonserver exited with %s", child.returncode)
            break
        if dog is None and _ready(ready_url):
            dog = StubWatchdog(
                child.pid, f"http://127.0.0.1:{port}", interval_s=interval_s, headers=headers
            ).start()
            log.warning("server ready; stub watchdog on (every %.0f s)", interval_s)
            try:
                drain.discover()
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                log.warning("cannot list the ensembles (%s); shutdown will not wait for them", exc)
        elif dog is None and time.monotonic() > deadline:
            log.error("tritonserver not ready after %.0f s; stopping it", start_timeout_s)
            stopping.set()
    if dog is not None:
        dog.stop()  # stubs exit on purpose from here on
    if child.poll() is None and drain.first_steps:
        try:
            left = drain.wait(drain_timeout_s)
            log.warning("drained; %d ensemble requests still in flight", left)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("drain failed (%s); stopping anyway", exc)
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(stop_timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
    return child.returncode if child.returncode is not None else 1


class EnsembleDrain:
    """Counts the requests inside the server's ensembles, so a shutdown can wait for them.

    Triton 2.51's own drain (SIGTERM, --exit-timeout-secs) waits for in-flight inferences
    but at once stops every model's scheduler from taking new requests, and an ensemble's
    next step is a new request: a defended request caught between steps fails with
    "Server is stopping" (triton-inference-server/server#6287 is the BLS form of it). So the
    supervisor waits here first, while the server still works normally, and only then sends
    SIGTERM. In flight = requests the ensembles' first steps have finished or failed minus
    the ones the ensembles have finished or failed (Triton's statistics API), which assumes
    nothing but the ensembles calls their first steps.
    """

    def __init__(self, http_url: str, headers: Mapping[str, str] | None = None) -> None:
        self.http_url, self.headers = http_url, headers
        self.first_steps: dict[str, str] = {}  # ensemble -> the model of its first step

    def discover(self) -> dict[str, str]:
        index = http_call(self.http_url, "POST", "/v2/repository/index", {}, headers=self.headers)
        for entry in index or []:
            name = entry.get("name")
            if entry.get("state") != "READY" or not name:
                continue
            config = http_call(
                self.http_url, "GET", f"/v2/models/{name}/config", headers=self.headers
            )
            if config.get("platform") == "ensemble":
                self.first_steps[name] = config["ensemble_scheduling"]["step"][0]["model_name"]
        return self.first_steps

    def in_flight(self) -> int:
        stats = http_call(self.http_url, "GET", "/v2/models/stats", headers=self.headers)
        done: dict[str, int] = {}
        for model in stats.get("model_stats", []):
            inference = model.get("inference_stats", {})
            count = sum(int(inference.get(k, {}).get("count", 0)) for k in ("success", "fail"))
            done[model["name"]] = done.get(model["name"], 0) + count
        started = sum(done.get(first, 0) for first in set(self.first_steps.values()))
        return started - sum(done.get(ensemble, 0) for ensemble in self.first_steps)

    def wait(self, timeout_s: float, poll_s: float = 0.2, baseline: int = 0) -> int:
        """Block until no ensemble request is in flight or `timeout_s` passes; the count left.
        `baseline`: the count at a quiet moment (direct calls to a first step add to it)."""
        deadline = time.monotonic() + timeout_s
        left = self.in_flight() - baseline
        while left > 0 and time.monotonic() < deadline:
            time.sleep(poll_s)
            left = self.in_flight() - baseline
        return left


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m smoothguard.watchdog [--interval S] -- tritonserver --model-repository=...`

    For deployments that start tritonserver themselves (the NGC container): supervises it and
    reloads models whose Python stub died. The admin header comes from $ADMIN_KEY if set.
    """
    parser = argparse.ArgumentParser(
        description=main.__doc__.split("\n\n")[0] if main.__doc__ else ""
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="tritonserver and its flags")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the tritonserver command after --")
    if not args.interval > 0:
        parser.error(f"--interval must be positive, got {args.interval}")
    logging.basicConfig(level=logging.INFO, format="watchdog: %(message)s")
    key = os.environ.get("ADMIN_KEY")
    try:
        exit_timeout = float(_flag(command, "exit-timeout-secs", "30"))
        return supervise(
            command,
            headers={"smoothguard-admin-key": key} if key else None,
            interval_s=args.interval,
            drain_timeout_s=exit_timeout,
            stop_timeout_s=exit_timeout + 10,
        )
    except ValueError as exc:
        parser.error(str(exc))
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
