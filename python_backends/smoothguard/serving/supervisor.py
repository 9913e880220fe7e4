"""The one process that runs tritonserver: behind the gateway, healed, restarted, drained.

`python -m smoothguard.serving.supervisor [--bind ADDR] -- tritonserver --grpc-port=8001 ...` is how
`make serve` (build/serve.py), the containers, Kubernetes and the tests all start the server.
The ports (and gRPC TLS flags) in the tritonserver command are the public ones: the supervisor
serves them through the gateway (smoothguard.serving.gateway, which checks every request before
Triton sees it) and starts tritonserver itself on free loopback ports. It then
- reloads a model whose Python stub died (smoothguard.serving.watchdog.StubWatchdog);
- restarts tritonserver when it exits on its own (a crash, the OOM killer), with backoff,
  and counts it in `smoothguard_server_restarts_total`; requests meanwhile get UNAVAILABLE
  from the gateway at once, which the client library retries;
- on SIGTERM/SIGINT stops admitting requests, waits for those in flight (their ensembles
  finish: Triton's own drain refuses an in-flight request's next step), then stops Triton.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from smoothguard.serving.gateway import Gateway, GatewayConfig, Limits
from smoothguard.serving.watchdog import STUB_NAME, StubWatchdog

log = logging.getLogger("smoothguard.serving.supervisor")

LOOPBACK = "127.0.0.1"
PORT_FLAGS = ("http-port", "grpc-port", "metrics-port")
TLS_FLAGS = (
    "grpc-use-ssl", "grpc-use-ssl-mutual", "grpc-server-cert", "grpc-server-key",
    "grpc-root-cert",
)  # fmt: skip
ADDRESS_FLAGS = ("http-address", "grpc-address", "metrics-address")
DEFAULT_PORTS = {"http-port": 8000, "grpc-port": 8001, "metrics-port": 8002}


def take_flags(args: Sequence[str], names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Split `--name=value` / `--name value` flags out of a command line."""
    rest: list[str] = []
    taken: dict[str, str] = {}
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if name in names:
            if "=" in arg:
                taken[name] = arg.split("=", 1)[1]
            elif i + 1 < len(args):
                taken[name], skip = args[i + 1], True
            else:
                raise ValueError(f"{arg} needs a value")
            continue
        rest.append(arg)
    return rest, taken


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


def _tls(flags: Mapping[str, str]) -> tuple[bytes, bytes, bytes | None] | None:
    """PEM material for the gateway's gRPC port from tritonserver's own TLS flags."""
    mutual = _true(flags.get("grpc-use-ssl-mutual"))
    if not (mutual or _true(flags.get("grpc-use-ssl"))):
        return None
    try:
        key = Path(flags["grpc-server-key"]).read_bytes()
        cert = Path(flags["grpc-server-cert"]).read_bytes()
    except KeyError as exc:
        raise ValueError(f"gRPC TLS needs --{exc.args[0]}") from exc
    client_ca = Path(flags["grpc-root-cert"]).read_bytes() if mutual else None
    return key, cert, client_ca


EXPLICIT_CONTROL = ("--model-control-mode=explicit", "--load-model=*")


def require_explicit_control(args: list[str]) -> None:
    """The stub watchdog reloads models, which only explicit model control allows."""
    modes = [a for a in args if a.startswith("--model-control-mode")]
    if modes != [EXPLICIT_CONTROL[0]]:
        raise ValueError(
            "the stub watchdog reloads models: run tritonserver with "
            f"{' '.join(EXPLICIT_CONTROL)} (or turn the watchdog off), "
            f"not {' '.join(modes) or 'no mode'}"
        )


@dataclass
class Supervisor:
    """Runs one tritonserver command behind the gateway until stopped."""

    command: Sequence[str]
    bind: str = LOOPBACK
    env: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None  # admin header, for a restricted repository API
    watchdog: bool = True
    interval_s: float = 2.0
    drain_timeout_s: float = 30.0
    stop_timeout_s: float = 35.0
    stop_grace_s: float = 5.0  # after a complete drain: how long Triton may take to unload
    start_timeout_s: float = 1800.0
    # Consecutive exits before the server ever got ready, after which the supervisor gives up
    # (a broken repository is not fixed by restarting it forever).
    max_failed_starts: int = 3
    limits: Limits = field(default_factory=Limits)
    restarts: Counter[str] = field(default_factory=Counter)
    stub_reloads: Counter[str] = field(default_factory=Counter)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _restart: threading.Event = field(default_factory=threading.Event)
    _restart_reason: str = ""
    child: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        rest, ports = take_flags(self.command, PORT_FLAGS)
        rest, tls = take_flags(rest, TLS_FLAGS)
        rest, _ = take_flags(rest, ADDRESS_FLAGS)
        self.public = {name: int(ports.get(name, DEFAULT_PORTS[name])) for name in PORT_FLAGS}
        self.tls = _tls(tls)
        if self.watchdog:
            require_explicit_control(rest)
        self._rest = rest
        self._pick_internal_ports()
        self.gateway = Gateway(
            GatewayConfig(
                bind=self.bind,
                grpc_port=self.public["grpc-port"],
                http_port=self.public["http-port"],
                metrics_port=self.public["metrics-port"],
                **self._upstream(),
                limits=self.limits,
                tls=self.tls,
                extra_metrics=self.metrics,
            )
        )

    def _pick_internal_ports(self) -> None:
        """Free loopback ports for tritonserver. They are free when picked, not reserved: a
        program that binds one before tritonserver does makes that start fail, so a failed
        start picks again (run())."""
        from smoothguard.serving.server import ServerPorts

        internal = ServerPorts.free()
        self.internal = {
            "http-port": internal.http, "grpc-port": internal.grpc,
            "metrics-port": internal.metrics,
        }  # fmt: skip
        self.internal_command = [
            *self._rest,
            *(f"--{name}={port}" for name, port in self.internal.items()),
            *(f"--{name}={LOOPBACK}" for name in ADDRESS_FLAGS),
        ]
        self.internal_http = f"http://{LOOPBACK}:{self.internal['http-port']}"

    def _upstream(self) -> dict[str, str]:
        return {
            "upstream_grpc": f"{LOOPBACK}:{self.internal['grpc-port']}",
            "upstream_http": self.internal_http,
            "upstream_metrics": f"http://{LOOPBACK}:{self.internal['metrics-port']}/metrics",
        }

    # -- control --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask run() to drain and return (signal handlers call this)."""
        self._stopping.set()

    def request_restart(self, reason: str) -> None:
        """Drain and restart tritonserver (the watchdog asks when a reload left stubs behind)."""
        log.warning("restart requested: %s", reason)
        self._restart_reason = reason
        self._restart.set()

    def metrics(self) -> list[str]:
        lines = [
            "# HELP smoothguard_server_restarts_total Times the supervisor restarted "
            "tritonserver, by reason.",
            "# TYPE smoothguard_server_restarts_total counter",
        ]
        reasons = self.restarts or Counter({"exited": 0})
        lines += [
            f'smoothguard_server_restarts_total{{reason="{r}"}} {n}' for r, n in reasons.items()
        ]
        lines += [
            "# HELP smoothguard_stub_reloads_total Models reloaded because a Python stub died.",
            "# TYPE smoothguard_stub_reloads_total counter",
        ]
        lines += [
            f'smoothguard_stub_reloads_total{{model="{m}"}} {n}'
            for m, n in sorted(self.stub_reloads.items())
        ]
        return lines

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until stop(); the exit status (0 after a clean stop)."""
        become_subreaper()
        self.gateway.start()
        failed_starts = 0
        code = 0
        try:
            while not self._stopping.is_set():
                ready, code = self._serve_once()
                if self._stopping.is_set():
                    break
                failed_starts = 0 if ready else failed_starts + 1
                if failed_starts >= self.max_failed_starts:
                    log.error("tritonserver failed to start %d times; giving up", failed_starts)
                    return code or 1
                if failed_starts:  # perhaps a port taken meanwhile: the next start gets others
                    self._pick_internal_ports()
                    self.gateway.retarget(**self._upstream())
                backoff = min(2.0**failed_starts, 30.0) if failed_starts else 0.5
                log.warning("restarting tritonserver in %.1f s", backoff)
                self._stopping.wait(backoff)
        finally:
            self.gateway.stop()
        return code

    def _serve_once(self) -> tuple[bool, int]:
        """Start tritonserver and watch it: (it got ready, its exit status)."""
        self._restart.clear()
        # Its own session: a terminal's Ctrl-C reaches the supervisor only, which drains first.
        child = subprocess.Popen(
            self.internal_command,
            env=None if self.env is None else dict(self.env),
            start_new_session=True,
        )
        self.child = child
        deadline = time.monotonic() + self.start_timeout_s
        dog: StubWatchdog | None = None
        ready = False
        leftovers = Leftovers()
        try:
            while not self._stopping.wait(0.5):
                reap_orphans(keep=child.pid)
                if child.poll() is None:  # a dead one's stubs are no longer its children
                    leftovers.note(child.pid)
                else:
                    log.error("tritonserver exited with %s", child.returncode)
                    self.gateway.refuse_new("tritonserver is restarting", restarting=True)
                    self.restarts["exited"] += 1
                    leftovers.clean()
                    return ready, child.returncode or 1
                if not ready and _ready(f"{self.internal_http}/v2/health/ready"):
                    ready = True
                    self.gateway.admit()
                    log.warning("server ready (pid %d)", child.pid)
                    if self.watchdog:
                        dog = self._watch(child.pid)
                elif not ready and time.monotonic() > deadline:
                    log.error("tritonserver not ready after %.0f s", self.start_timeout_s)
                    return False, self._terminate(child, drain=False) or 1
                if self._restart.is_set():
                    self.restarts[_reason_label(self._restart_reason)] += 1
                    self._terminate(child, drain=True, dog=dog)
                    dog = None
                    self.gateway.admit()
                    return True, 0
            # Drain even if this loop has not seen it ready yet: the gateway forwards as soon as
            # tritonserver answers, which can be half a poll before this loop notices.
            return ready, self._terminate(child, drain=True, dog=dog)
        finally:
            if dog is not None:
                dog.stop()

    def _watch(self, pid: int) -> StubWatchdog:
        def reloaded(model: str) -> None:
            self.stub_reloads[model] += 1

        dog = StubWatchdog(
            pid,
            self.internal_http,
            interval_s=self.interval_s,
            headers=self.headers,
            on_restart=reloaded,
        )
        dog.on_leak = self.request_restart
        log.warning("stub watchdog on (every %.0f s)", self.interval_s)
        return dog.start()

    def _terminate(
        self, child: subprocess.Popen[bytes], *, drain: bool, dog: StubWatchdog | None = None
    ) -> int:
        """Drain, SIGTERM, and a bounded wait. Once nothing is in flight, a tritonserver still
        unloading models after `stop_grace_s` is killed (Triton 2.51 takes 10-30 s to finalise
        a repository of Python models on 2 cores) and its shared memory removed: nothing is
        lost, and the stop counts as clean."""
        if dog is not None:
            dog.stop()  # stubs exit on purpose from here on
        left = -1
        if drain:
            left = self.gateway.drain(self.drain_timeout_s)
            log.warning("drained; %d requests still in flight", left)
        else:
            self.gateway.refuse_new("the server is stopping")
        if child.poll() is None:
            shm = shared_memory_of(child.pid)
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(self.stop_grace_s if left == 0 else self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                if left == 0:
                    log.warning(
                        "tritonserver still unloading after %.0f s with nothing in flight; "
                        "stopping it now", self.stop_grace_s,
                    )  # fmt: skip
                else:
                    log.error("tritonserver not stopped in %.0f s; killing it", self.stop_timeout_s)
                kill_tree(child.pid)
                child.wait(10)
                time.sleep(0.2)  # the killed stubs become zombies of ours
                reap_orphans(keep=child.pid)
                for path in shm:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                return 0 if left == 0 else 1
        return child.returncode if child.returncode is not None else 1


@dataclass
class Leftovers:
    """What a tritonserver that dies leaves behind: its Python stubs (they outlive it for a
    while) and their /dev/shm regions (in RAM until removed). Noted every few seconds while
    it runs, removed after it died."""

    every_s: float = 5.0
    stubs: set[int] = field(default_factory=set)
    shm: set[Path] = field(default_factory=set)
    _last: float = 0.0

    def note(self, pid: int) -> None:
        if time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        self.stubs = set(descendants(pid))
        self.shm = shared_memory_of(pid)

    def clean(self) -> None:
        for pid in self.stubs:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if STUB_NAME in " ".join(proc.cmdline()):
                    proc.kill()
            # Orphaned, they are ours (become_subreaper; PID 1 in a container): reap them.
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)
        for path in self.shm:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.stubs or self.shm:
            log.warning(
                "removed %d stubs and %d shared memory regions of the dead server",
                len(self.stubs),
                len(self.shm),
            )


def reap_orphans(keep: int) -> list[int]:
    """Reap this process's zombie children except `keep` (tritonserver, which Popen reaps):
    as a subreaper (or PID 1) the supervisor inherits the stubs of a server it stopped."""
    reaped = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            if child.pid == keep:
                continue
            with contextlib.suppress(psutil.Error, ChildProcessError, OSError):
                if child.status() == psutil.STATUS_ZOMBIE and os.waitpid(child.pid, os.WNOHANG)[0]:
                    reaped.append(child.pid)
    return reaped


def become_subreaper() -> None:
    """Orphans of tritonserver (stubs of a server that died) become this process's children,
    so they are reaped here instead of lingering as zombies under init (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def shared_memory_of(pid: int) -> set[Path]:
    """The /dev/shm files a process tree maps (the Python backend's regions), so that they
    can be removed after a kill: a killed tree leaves them behind, in RAM."""
    found: set[Path] = set()
    for proc in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc}/maps").read_text().splitlines():
                path = line.split(maxsplit=5)[-1]
                if path.startswith("/dev/shm/"):
                    found.add(Path(path.removesuffix(" (deleted)")))
    return found


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (stubs included)."""
    for proc in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc, signal.SIGKILL)


def _reason_label(reason: str) -> str:
    return "stub_leak" if "stub" in reason else "requested"


def _ready(url: str) -> bool:
    """Whether tritonserver answers ready. Anything else is "not yet", never a crash: before
    tritonserver binds its port, another program may briefly hold it and answer in another
    protocol (CI once saw HTTP/2 frames there, and the supervisor died of BadStatusLine)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False


def install_signal_handlers(supervisor: Supervisor) -> None:
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stop())
    signal.signal(signal.SIGINT, lambda *_: supervisor.stop())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m smoothguard.serving.supervisor [--bind ADDR] -- tritonserver ...`"""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--bind",
        default=os.environ.get("SMOOTHGUARD_BIND", LOOPBACK),
        help="address of the public ports (default 127.0.0.1; 0.0.0.0 in containers)",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between stub polls")
    parser.add_argument(
        "--no-watchdog", dest="watchdog", action="store_false", help="do not reload models"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="tritonserver and its flags")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the tritonserver command after --")
    if not args.interval > 0:
        parser.error(f"--interval must be positive, got {args.interval}")
    logging.basicConfig(level=logging.INFO, format="supervisor: %(message)s")
    key = os.environ.get("ADMIN_KEY")
    _, flags = take_flags(command, ("exit-timeout-secs",))
    exit_timeout = float(flags.get("exit-timeout-secs", 30))
    try:
        supervisor = Supervisor(
            command,
            bind=args.bind,
            headers={"smoothguard-admin-key": key} if key else None,
            watchdog=args.watchdog,
            interval_s=args.interval,
            drain_timeout_s=exit_timeout,
            stop_timeout_s=exit_timeout + 5,
        )
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    install_signal_handlers(supervisor)
    return supervisor.run()


if __name__ == "__main__":
    raise SystemExit(main())
