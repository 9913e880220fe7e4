"""build/serve.py as `make serve` and the cpu Kubernetes overlay run it: the supervisor behind
its gateway heals stubs, restarts a dead tritonserver, and drains before it stops."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from smoothguard.serving.watchdog import live_stubs
from smoothguard.synthetic.synthpope import generate_split

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]
IN_FLIGHT = 8  # defended requests inside the server when it is told to stop


def _embed(client: grpcclient.InferenceServerClient) -> Any:
    text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"a low tone"]], np.object_))
    return client.infer("embedder", [text], client_timeout=60)


def _heavy() -> list[Any]:
    """The heaviest defended request (N=64, 64 new tokens): it queues behind the others."""
    image = generate_split("test", 1)[0].image
    inputs = []
    for name, array, wire in (
        ("IMAGE", image, "UINT8"),
        ("PROMPT", np.array([b"Describe the image."], np.object_), "BYTES"),
        ("NUM_SAMPLES", np.array([64], np.int32), "INT32"),
        ("MAX_NEW_TOKENS", np.array([64], np.int32), "INT32"),
    ):
        tensor = grpcclient.InferInput(name, list(array.shape), wire)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (InferenceServerException, ConnectionError) as exc:
            last = exc
        time.sleep(1)
    pytest.fail(f"{what} within {timeout_s} s: {last}")


def _metric(port: int, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_serve_supervises_heals_restarts_and_drains(tmp_path: Path, server_ports: Any) -> None:
    """make serve's process: loopback only, admin APIs locked with a printed key, a killed
    stub reloaded, a killed tritonserver restarted (and counted), and a Ctrl-C with requests
    in flight answers them all, then stops within 10 s with exit status 0."""
    http, grpc, metrics = dataclasses.astuple(server_ports())
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child's output
    env = {k: v for k, v in os.environ.items() if k != "ADMIN_KEY"}
    serve = subprocess.Popen(
        [
            sys.executable, str(REPO_ROOT / "build" / "serve.py"),
            "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
            "--set", "overlays=[]",  # images only: the quicker start
        ],
        stdout=log, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group, as a terminal gives `make serve`
    )  # fmt: skip
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
        _wait(lambda: client.is_server_ready(), 300, "serve.py did not get ready")
        _wait(lambda: "stub watchdog on" in log_path.read_text(), 30, "no watchdog")
        text = log_path.read_text()
        key = re.search(r"smoothguard-admin-key: (\S+)", text)
        assert key, text[-2000:]
        # Public ports on loopback only, tritonserver's own on loopback too.
        listening = [
            c.laddr for p in [psutil.Process(serve.pid), *psutil.Process(serve.pid).children(True)]
            for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN
        ]  # fmt: skip
        assert {a.port for a in listening} >= {http, grpc, metrics}
        assert all(a.ip in ("127.0.0.1", "::ffff:127.0.0.1") for a in listening), listening
        index = f"http://127.0.0.1:{http}/v2/repository/index"
        assert _status(index) == 403
        assert _status(index, {"smoothguard-admin-key": key.group(1)}) == 200

        server = psutil.Process(serve.pid).children()[0]
        assert server.name().startswith("tritonserver")
        (embedder_stub,) = [p for p, m in live_stubs(server.pid).items() if m == "embedder"]
        assert _embed(client).as_numpy("EMBEDDING").shape[0] == 1
        psutil.Process(embedder_stub).kill()
        _wait(lambda: _embed(client) is not None, 180, "embedder did not come back")
        assert embedder_stub not in live_stubs(server.pid)
        assert "reloaded with a fresh stub" in log_path.read_text()

        # tritonserver itself dies: the supervisor starts a new one and counts it.
        restarts = 'smoothguard_server_restarts_total{reason="exited"}'
        assert _metric(metrics, restarts) == 0
        server.kill()
        _wait(lambda: _metric(metrics, restarts) == 1, 60, "the restart was not counted")
        _wait(lambda: _embed(client) is not None, 300, "the restarted server did not answer")
        server = psutil.Process(serve.pid).children()[0]
        assert server.name().startswith("tritonserver")

        # Ctrl-C with eight defended requests in flight: all eight are answered first. (N=64
        # takes ~0.3 s on an idle machine, so all eight are inside together only briefly.)
        results: dict[int, Any] = {}
        finished: dict[int, float] = {}

        def one(index: int) -> None:
            try:
                results[index] = client.infer("smoothguard", _heavy(), client_timeout=120)
            except InferenceServerException as exc:
                results[index] = exc
            finished[index] = time.monotonic()

        workers = [threading.Thread(target=one, args=(i,)) for i in range(IN_FLIGHT)]
        for worker in workers:
            worker.start()
        in_flight = "smoothguard_gateway_in_flight"
        deadline = time.monotonic() + 60
        while _metric(metrics, in_flight) < IN_FLIGHT:
            assert time.monotonic() < deadline, "the requests were not in flight together"
            time.sleep(0.01)
        os.killpg(serve.pid, signal.SIGINT)
        signalled = time.monotonic()
        for worker in workers:
            worker.join(150)
        answered = time.monotonic()
        failed = {i: r.message() for i, r in results.items() if isinstance(r, Exception)}
        assert len(results) == IN_FLIGHT and not failed, failed
        # Answered after the Ctrl-C, so the stop waited for them (not all done before it).
        assert max(finished.values()) > signalled, (signalled, finished)
        code = serve.wait(60)
        stopped = time.monotonic() - answered
        text = log_path.read_text()
        assert code == 0, text[-3000:]
        assert stopped <= 10, f"{stopped:.1f} s from the last answer to the exit"
        assert "drained; 0 requests still in flight" in text, text[-3000:]
        assert "serve: stopped (exit 0)" in text
        assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
    finally:
        if serve.poll() is None:
            for child in psutil.Process(serve.pid).children(recursive=True):
                child.kill()
            serve.kill()
        log.close()
