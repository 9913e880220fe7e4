"""How the supervisor rewrites a tritonserver command: public ports to the gateway, Triton to
loopback, TLS to the gateway; and the refusals that keep it from running a server it could not
heal."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from smoothguard.serving import supervisor
from smoothguard.serving.server import ServerPorts, server_environment, tritonserver_binary
from smoothguard.serving.supervisor import Supervisor, shared_memory_of, take_flags

EXPLICIT = ["--model-control-mode=explicit", "--load-model=*"]


def test_flags_are_taken_in_both_spellings() -> None:
    rest, taken = take_flags(
        ["tritonserver", "--http-port=9000", "--grpc-port", "9001", "--x=1"],
        ["http-port", "grpc-port"],
    )
    assert rest == ["tritonserver", "--x=1"]
    assert taken == {"http-port": "9000", "grpc-port": "9001"}
    with pytest.raises(ValueError, match="needs a value"):
        take_flags(["tritonserver", "--grpc-port"], ["grpc-port"])


def test_tritonserver_listens_on_loopback_and_the_gateway_on_the_public_ports() -> None:
    command = [
        "tritonserver", "--model-repository=/m", "--http-port=9000", "--grpc-port=9001",
        "--metrics-port=9002", "--grpc-address=0.0.0.0", *EXPLICIT,
    ]  # fmt: skip
    sup = Supervisor(command, bind="0.0.0.0")
    assert sup.public == {"http-port": 9000, "grpc-port": 9001, "metrics-port": 9002}
    internal = sup.internal_command
    assert "--grpc-address=0.0.0.0" not in internal
    for flag in ("http-address", "grpc-address", "metrics-address"):
        assert f"--{flag}=127.0.0.1" in internal
    ports = {a.split("=")[0][2:]: int(a.split("=")[1]) for a in internal if "-port=" in a}
    assert ports == sup.internal and not set(ports.values()) & {9000, 9001, 9002}
    config = sup.gateway.config
    assert (config.bind, config.grpc_port, config.http_port) == ("0.0.0.0", 9001, 9000)
    assert config.upstream_grpc == f"127.0.0.1:{sup.internal['grpc-port']}"


def test_grpc_tls_moves_to_the_gateway(tmp_path: Path) -> None:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    key.write_bytes(b"KEY")
    cert.write_bytes(b"CERT")
    tls = ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
    sup = Supervisor(["tritonserver", *tls, *EXPLICIT])
    assert not any("ssl" in a or "server-cert" in a for a in sup.internal_command)
    assert sup.gateway.config.tls == (b"KEY", b"CERT", None)
    with pytest.raises(ValueError, match="grpc-server-key"):
        Supervisor(["tritonserver", "--grpc-use-ssl=true", f"--grpc-server-cert={cert}"])


def test_it_refuses_a_server_it_could_not_reload_models_on() -> None:
    with pytest.raises(ValueError, match="explicit"):
        Supervisor(["tritonserver", "--model-repository=/m"])
    with pytest.raises(ValueError, match="explicit"):
        Supervisor(["tritonserver", "--model-control-mode=none"])
    Supervisor(["tritonserver", "--model-control-mode=none"], watchdog=False)
    with pytest.raises(SystemExit):
        supervisor.main(["--"])  # no command
    with pytest.raises(SystemExit):
        supervisor.main(["--interval", "0", "--", "tritonserver"])


def test_metrics_name_restarts_and_reloads() -> None:
    sup = Supervisor(["tritonserver", *EXPLICIT])
    assert 'smoothguard_server_restarts_total{reason="exited"} 0' in sup.metrics()
    sup.restarts["exited"] += 2
    sup.stub_reloads["mllm"] += 1
    lines = sup.metrics()
    assert 'smoothguard_server_restarts_total{reason="exited"} 2' in lines
    assert 'smoothguard_stub_reloads_total{model="mllm"} 1' in lines


def test_shared_memory_of_a_process_tree_is_found(tmp_path: Path) -> None:
    """A killed Python backend leaves its /dev/shm regions behind; the supervisor finds them
    in the tree's memory maps first, so it can remove them."""
    region = Path("/dev/shm") / f"smoothguard-test-{tmp_path.name}"
    script = (
        "import mmap, sys, time\n"
        f"f = open({str(region)!r}, 'w+b'); f.truncate(4096)\n"
        "m = mmap.mmap(f.fileno(), 4096); print('ok', flush=True); time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ok"
        assert region in shared_memory_of(child.pid)
    finally:
        child.kill()
        child.wait(10)
        region.unlink(missing_ok=True)


def test_a_port_that_answers_in_another_protocol_is_not_ready() -> None:
    """Before tritonserver binds its HTTP port another program may hold it; the readiness
    probe must read its answer as "not ready", not die of it (seen in CI: HTTP/2 frames)."""

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def answer_garbage() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x7f\xff\xff\xff\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        assert supervisor._ready(f"http://127.0.0.1:{port}/v2/health/ready") is False
        thread.join(timeout=5)


@pytest.mark.integration
def test_a_port_taken_before_tritonserver_binds_it_costs_one_failed_start(tmp_path: Path) -> None:
    """The internal ports are free when picked, not reserved. A program that binds one first
    makes tritonserver exit at start; the supervisor picks other ports for the next start and
    the gateway forwards to them (before, it retried the same ports until it gave up)."""
    public = ServerPorts.free()
    sup = Supervisor(
        [
            str(tritonserver_binary()), f"--model-repository={tmp_path}", *EXPLICIT,
            f"--http-port={public.http}", f"--grpc-port={public.grpc}",
            f"--metrics-port={public.metrics}",
        ],
        env=server_environment(),
    )  # fmt: skip
    taken = sup.internal["grpc-port"]
    exits: list[int] = []
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen(1)
        thread = threading.Thread(target=lambda: exits.append(sup.run()), daemon=True)
        thread.start()
        try:
            # Ready through the gateway's public ports: HTTP, then gRPC.
            deadline = time.monotonic() + 120
            while not supervisor._ready(f"http://127.0.0.1:{public.http}/v2/health/ready"):
                assert thread.is_alive() and time.monotonic() < deadline, (exits, sup.restarts)
                time.sleep(0.2)
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{public.grpc}")
            assert client.is_server_ready()
            assert client.get_server_metadata().name == "triton"
            assert sup.restarts["exited"] == 1 and sup.internal["grpc-port"] != taken
            assert sup.gateway.config.upstream_grpc == f"127.0.0.1:{sup.internal['grpc-port']}"
        finally:
            sup.stop()
            thread.join(90)
    assert exits == [0] and sup.restarts["exited"] == 1
