"""Start a real tritonserver on this machine from the PyPI `nvidia-pytriton` wheel.

The wheel ships the server binary, its shared libraries and the Python backend, but the
backend directory must be assembled (backend + the stub for our Python version) and the stub
must see this environment's packages, which is what this module does. The tests, the CLI
`smoothguard-serve` and the benchmarks all start the server through `TritonServer`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from smoothguard.serving.supervisor import EXPLICIT_CONTROL, require_explicit_control

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class ServerPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def free(cls) -> ServerPorts:
        """Three distinct free ports on this host. The sockets are held open together while
        the OS picks, so it cannot hand the same port out twice (closed one at a time, it did:
        tritonserver then refused to start, HTTP and gRPC on one port)."""
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(socket.socket()) for _ in range(3)]
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            http, grpc, metrics = (int(sock.getsockname()[1]) for sock in sockets)
        return cls(http=http, grpc=grpc, metrics=metrics)


def _pytriton_root() -> Path:
    import pytriton  # the package only locates the binary; we never use its Python API

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def tritonserver_binary() -> Path:
    return _pytriton_root() / "bin" / "tritonserver"


def backend_directory(cache_dir: Path) -> Path:
    """Assemble backends/python with the stub that matches this interpreter."""
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"nvidia-pytriton ships no Python backend stub for Python {version}")
    target = cache_dir / "backends"
    python_dir = target / "python"
    marker = python_dir / ".assembled"
    if not marker.exists():
        if python_dir.exists():
            shutil.rmtree(python_dir)
        shutil.copytree(root / "backends" / "python", python_dir)
        shutil.copy2(stub, python_dir / "triton_python_backend_stub")
        marker.write_text(str(stub))
    return target


def perf_analyzer_binary() -> str:
    """The tritonclient wheel installs perf_analyzer next to this interpreter; PATH may lack it
    when the venv is not activated."""
    local = Path(sys.executable).parent / "perf_analyzer"
    return str(local) if local.exists() else "perf_analyzer"


def perf_analyzer_environment() -> dict[str, str]:
    """perf_analyzer (from the tritonclient wheel) links libcudart even on CPU; PyPI's
    nvidia-cuda-runtime-cu12 ships it."""
    import nvidia.cuda_runtime

    env = dict(os.environ)
    lib = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p
    )
    return env


def server_environment(extra_pythonpath: list[Path] | None = None) -> dict[str, str]:
    """Environment in which the stub (embedding the system libpython) finds our packages."""
    env = dict(os.environ)
    site_packages = sysconfig.get_paths()["purelib"]
    libs = Path(site_packages) / "nvidia_pytriton.libs"
    paths = [str(p) for p in extra_pythonpath or []]
    paths += [str(REPO_ROOT / "python_backends"), str(REPO_ROOT / "client"), site_packages]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = [str(libs), libdir]
    if env.get("LD_LIBRARY_PATH"):
        ld.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in ld if p)
    # The stub's embedded interpreter finds its prefix (and so this venv's site-packages and
    # .pth files) through `python3` on PATH, as an activated venv would have it.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


# Triton's local response cache, used by the generate step (response_cache in its config):
# answers of seeded requests only, as the cache key includes the noisy copies themselves and
# an unseeded request's copies are fresh OS-entropy noise every time. The same size is set in
# docker-compose.yml and deploy/base (tests/deploy checks they agree).
RESPONSE_CACHE_ARG = "--cache-config=local,size=67108864"


@dataclass
class TritonServer:
    """tritonserver under smoothguard.serving.supervisor (gateway in front, watchdog, drain), as a
    child process; use as a context manager or call start()/stop()."""

    model_repository: Path
    ports: ServerPorts = field(default_factory=ServerPorts)
    work_dir: Path = field(default_factory=lambda: REPO_ROOT / "var" / "server")
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    exit_timeout_s: int = 30
    # Reload models whose Python stub died (serving.watchdog); needs explicit model control,
    # which this adds unless extra_args choose a mode. `admin_headers` for restricted APIs.
    watchdog: bool = False
    watchdog_interval_s: float = 2.0
    admin_headers: dict[str, str] | None = None
    # Address of the public ports (the gateway's); tritonserver itself listens on loopback.
    bind: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        backends = backend_directory(self.work_dir)
        control: list[str] = []
        if self.watchdog:
            if not any(a.startswith("--model-control-mode") for a in self.extra_args):
                control = list(EXPLICIT_CONTROL)
            require_explicit_control([*control, *self.extra_args])
        # The deployments pass their own --cache-config (deploy/base); one flag, not two.
        cache = (
            []
            if any(a.startswith("--cache-config") for a in self.extra_args)
            else [RESPONSE_CACHE_ARG]
        )
        return [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--strict-readiness=true",
            # pytriton's binary looks for cache libraries in /opt/tritonserver by default.
            f"--cache-directory={_pytriton_root() / 'caches'}",
            *cache,
            *control,
            *self.extra_args,
        ]

    def supervisor_command(self) -> list[str]:
        """tritonserver's command under the supervisor, as every deployment runs it."""
        flags = ["--interval", str(self.watchdog_interval_s), "--bind", self.bind]
        if not self.watchdog:
            flags.append("--no-watchdog")
        return [
            sys.executable,
            "-m",
            "smoothguard.serving.supervisor",
            *flags,
            "--",
            *self.command(),
        ]

    def start(self, timeout_s: float = 300.0) -> TritonServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.work_dir / f"tritonserver-{self.ports.grpc}.log"
        self.log_path = log_path
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
        env = server_environment()
        if self.admin_headers:
            env["ADMIN_KEY"] = next(iter(self.admin_headers.values()))
        self.process = subprocess.Popen(
            self.supervisor_command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.wait_ready(timeout_s)
        return self

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of the server's metrics (Triton's and the supervisor's), 0 if absent."""
        url = f"http://127.0.0.1:{self.ports.metrics}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        prefix = f"{name}{{{labels}}} " if labels else f"{name} "
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.ports.http}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.process.returncode}; log tail:\n"
                    + self.log_tail()
                )
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, OSError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"tritonserver not ready after {timeout_s}s; log tail:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 90.0) -> int | None:
        """SIGTERM to the supervisor: it drains, then stops tritonserver; its exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        from smoothguard.serving.supervisor import descendants  # tritonserver has its own session

        tree = descendants(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            for proc in [self.process.pid, *tree]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc, signal.SIGKILL)
            return self.process.wait(10)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
