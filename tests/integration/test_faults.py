"""Faults against a real tritonserver: a model that raises, a model past the generate step's
timeout, client cancellation and disconnect, a killed backend stub, SIGTERM with requests in
flight, and clients retrying through a server restart."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from smoothguard.core.settings import RequestOptions
from smoothguard.serving.server import TritonServer
from smoothguard.synthetic.synthpope import generate_split
from smoothguard_client import RetryPolicy, SmoothGuardClient

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0


def url(server: TritonServer) -> str:
    return f"127.0.0.1:{server.ports.grpc}"


def tensor(name: str, array: np.ndarray, wire: str) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(array.shape), wire)
    item.set_data_from_numpy(array)
    return item


SCENE = generate_split("test", 1)[0]


def ask_inputs(num_samples: int = 4, max_new_tokens: int = 8) -> list[grpcclient.InferInput]:
    return [
        tensor("IMAGE", SCENE.image, "UINT8"),
        tensor("PROMPT", np.array([b"Describe the image."], np.object_), "BYTES"),
        tensor("NUM_SAMPLES", np.array([num_samples], np.int32), "INT32"),
        tensor("MAX_NEW_TOKENS", np.array([max_new_tokens], np.int32), "INT32"),
    ]


def heavy_inputs() -> list[grpcclient.InferInput]:
    """A request that keeps the MLLM busy for a while (the largest N and answer length)."""
    return ask_inputs(num_samples=64, max_new_tokens=64)


def assert_serving(client: grpcclient.InferenceServerClient) -> None:
    """Healthy and answering: the real test of 'the server survived'."""
    assert client.is_server_live() and client.is_server_ready()
    result = client.infer("smoothguard", ask_inputs(), client_timeout=TIMEOUT_S)
    assert result.as_numpy("TEXT")[0]


def wait_serving(
    client: grpcclient.InferenceServerClient, after: str, timeout_s: float = 120
) -> None:
    """Poll until smoothguard answers again (a model reload takes seconds to tens of seconds;
    a restart reports not ready meanwhile)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            assert_serving(client)
            return
        except (InferenceServerException, AssertionError) as exc:
            last = exc
            time.sleep(1)
    pytest.fail(f"smoothguard did not recover after {after}: {last}")


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition (a bounded wait on what the test needs, never a fixed pause)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


IN_FLIGHT = "smoothguard_gateway_in_flight"  # inference calls inside the server now


@pytest.fixture
def serving(fault_server: TritonServer) -> TritonServer:
    """The fault server running and answering, whatever the test before left behind (the
    SIGTERM and restart tests stop it; the killed-stub test leaves a restart behind): every
    test sets up its own precondition instead of relying on the order they run in."""
    if fault_server.process is None or fault_server.process.poll() is not None:
        fault_server.start(timeout_s=240)
    wait_serving(grpcclient.InferenceServerClient(url(fault_server)), "the last test")
    wait_for(lambda: fault_server.metric(IN_FLIGHT) == 0, 60, "an earlier call is still inside")
    return fault_server


def generate_inputs(client: grpcclient.InferenceServerClient) -> list[grpcclient.InferInput]:
    """What the ensemble hands the generate step: the noise step's output and the options."""
    noisy = client.infer("noise", ask_inputs(num_samples=3), client_timeout=TIMEOUT_S)
    options = RequestOptions(0.15, 3, None, 8, "answer", False).to_json()
    return [
        tensor("PIXEL_VALUES", noisy.as_numpy("PIXEL_VALUES"), "FP32"),
        tensor("PROMPT", np.array([b"Describe the image."], np.object_), "BYTES"),
        tensor("OPTIONS", np.array([options.encode()], np.object_), "BYTES"),
    ]


def failure(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_a_model_that_raises_fails_cleanly(serving: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(url(serving))
    inputs = generate_inputs(client)
    direct = failure(lambda: client.infer("raising_mllm", mllm_inputs(), client_timeout=30))
    assert "injected failure" in direct.message(), direct
    via_generate = failure(lambda: client.infer("generate_raising", inputs, client_timeout=30))
    message = via_generate.message()
    assert "3 of 3 MLLM calls failed" in message and "injected failure" in message, message
    assert_serving(client)


def mllm_inputs() -> list[grpcclient.InferInput]:
    """One row for an mllm-shaped model."""
    pixels = np.zeros((1, 3, 8, 8), np.float32)
    prompt = np.array([[b"Describe the image."]], np.object_)
    return [tensor("PIXEL_VALUES", pixels, "FP32"), tensor("PROMPT", prompt, "BYTES")]


def test_a_slow_model_hits_the_generate_timeout(serving: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(url(serving))
    config = client.get_model_config("generate_slow").config
    timeout_s = int(config.parameters["mllm_timeout_s"].string_value)
    inputs = generate_inputs(client)
    started = time.monotonic()
    error = failure(lambda: client.infer("generate_slow", inputs, client_timeout=30))
    elapsed = time.monotonic() - started
    assert error.status() == "StatusCode.UNAVAILABLE", error
    assert f"within {timeout_s} s" in error.message(), error
    assert elapsed < timeout_s + 5, elapsed
    # A caller's own deadline on the slow model ends the call on time too.
    started = time.monotonic()
    deadline = failure(lambda: client.infer("slow_mllm", mllm_inputs(), client_timeout=1.0))
    assert deadline.status() == "StatusCode.DEADLINE_EXCEEDED", deadline
    assert time.monotonic() - started < 5
    assert_serving(client)


def test_client_cancellation_leaves_the_server_healthy(serving: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(url(serving))
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def callback(result: Any, error: Any) -> None:
        outcome["result"], outcome["error"] = result, error
        done.set()

    # slow_mllm answers after 8 s: the call is cancelled once the server has it in flight.
    context = client.async_infer("slow_mllm", mllm_inputs(), callback, client_timeout=TIMEOUT_S)
    wait_for(lambda: serving.metric(IN_FLIGHT) >= 1, 10, "the call never reached the server")
    assert not done.is_set(), outcome
    context.cancel()
    assert done.wait(10), "a cancelled call must end at once"
    assert outcome["error"] is not None, "the call finished before it was cancelled"
    assert "CANCELLED" in str(outcome["error"].status()), outcome["error"]
    # The server lets go of it: nothing is left in flight (well before slow_mllm's 8 s).
    wait_for(lambda: serving.metric(IN_FLIGHT) == 0, 5, "the cancelled call is still inside")
    assert_serving(client)


def test_client_disconnect_mid_call_leaves_the_server_healthy(serving: TritonServer) -> None:
    """A client process killed mid-call: its connection drops with the request in flight."""
    client = grpcclient.InferenceServerClient(url(serving))
    script = (
        "import sys, numpy as np, tritonclient.grpc as g\n"
        "def t(n, a, w):\n"
        "    i = g.InferInput(n, list(a.shape), w); i.set_data_from_numpy(a); return i\n"
        "c = g.InferenceServerClient(sys.argv[1])\n"
        "inputs = [t('PIXEL_VALUES', np.zeros((1, 3, 8, 8), np.float32), 'FP32'),\n"
        "          t('PROMPT', np.array([[b'Describe the image.']], np.object_), 'BYTES')]\n"
        "print('sending', flush=True)\n"
        "c.infer('slow_mllm', inputs, client_timeout=120)\n"
        "print('answered', flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, url(serving)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "sending"
    wait_for(lambda: serving.metric(IN_FLIGHT) >= 1, 10, "the call never reached the server")
    assert child.poll() is None, "the request finished before the client could be killed"
    child.kill()
    child.wait(10)
    # The dropped call ends at the server too (well before slow_mllm's 8 s), not only at
    # the client.
    wait_for(lambda: serving.metric(IN_FLIGHT) == 0, 5, "the dropped call is still inside")
    assert_serving(client)


def test_sigterm_drains_in_flight_requests_first(serving: TritonServer) -> None:
    """SIGTERM to the supervisor while requests are inside: the gateway refuses new ones, those
    in flight finish (Triton's own drain alone would refuse their next ensemble step: "Server
    is stopping"), and only then does tritonserver stop; exit status 0. In flight means in
    flight when the signal lands: eight heavy defended requests, which the 2 mllm instances
    answer over a second or more, and one call to slow_mllm, which answers 8 s later."""
    client = grpcclient.InferenceServerClient(url(serving))
    results: dict[str, Any] = {}
    finished: dict[str, float] = {}

    def one(key: str, model: str, inputs: list[grpcclient.InferInput]) -> None:
        try:
            out = client.infer(model, inputs, client_timeout=TIMEOUT_S)
            results[key] = out.as_numpy("TEXT").reshape(-1)[0]
        except InferenceServerException as exc:
            results[key] = exc
        finished[key] = time.monotonic()

    calls = [(f"smoothguard {i}", "smoothguard", heavy_inputs()) for i in range(8)]
    calls.append(("slow_mllm", "slow_mllm", mllm_inputs()))
    workers = [threading.Thread(target=one, args=call) for call in calls]
    for worker in workers:
        worker.start()
    wait_for(
        lambda: serving.metric(IN_FLIGHT) >= len(calls),
        30,  # N=64 takes ~0.3 s idle: the eight are inside together only briefly
        "the requests were not in flight together",
    )
    assert serving.process is not None
    serving.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # draining: the gateway reports not ready and refuses what comes now
    wait_for(lambda: not client.is_server_ready(), 10, "the server still reports ready")
    late = InferenceServerException("not sent")
    try:
        client.infer("smoothguard", ask_inputs(), client_timeout=TIMEOUT_S)
    except InferenceServerException as exc:
        late = exc
    assert late.status() == "StatusCode.UNAVAILABLE" and "stopping" in late.message(), late
    for worker in workers:
        worker.join(TIMEOUT_S + 10)
    failed = {k: r.message() for k, r in results.items() if isinstance(r, Exception)}
    assert len(results) == len(calls) and not failed, failed
    # They were answered after the signal, so the server waited for them (the slow one
    # surely; at least one defended request too, past the first step of its ensemble).
    assert finished["slow_mllm"] > signalled
    assert max(t for k, t in finished.items() if k != "slow_mllm") > signalled, finished
    code = serving.process.wait(serving.exit_timeout_s + 20)
    stopped = time.monotonic()
    assert code == 0, serving.log_tail()
    assert stopped >= max(finished.values()), "the server stopped before the last answer"
    assert "drained; 0 requests still in flight" in serving.log_tail(200)


def test_clients_retry_through_a_restart(
    fault_server: TritonServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server is down when the calls start and comes back; both calls ride it out."""
    fault_server.stop()
    caplog.set_level(logging.WARNING, logger="smoothguard_client")
    # enough retries for a start under load (up to ~4 min on 2 busy cores)
    policy = RetryPolicy(retries=120, backoff_s=0.2, max_backoff_s=2.0, jitter=0.2)
    outcome: dict[str, Any] = {}

    def call(name: str, fn: Any) -> None:
        try:
            outcome[name] = fn()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome[name] = exc

    def retried() -> set[str]:
        """The calls that have logged a retry so far (ask is `infer`; the rest is health)."""
        lines = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
        return {"ask" if line.startswith("infer ") else "health" for line in lines}

    with SmoothGuardClient(url(fault_server), retry=policy, timeout_s=TIMEOUT_S) as sg:
        workers = [
            threading.Thread(target=call, args=("health", sg.health)),
            threading.Thread(
                target=call,
                args=("ask", lambda: sg.ask(SCENE.image, "Describe the image.", num_samples=3)),
            ),
        ]
        for worker in workers:
            worker.start()
        # Both calls have met the server down and are retrying before it comes back.
        wait_for(lambda: retried() == {"ask", "health"}, 30, f"no retries: {outcome}")
        assert all(w.is_alive() for w in workers), outcome
        fault_server.start(timeout_s=240)
        for worker in workers:
            worker.join(120)
    assert isinstance(outcome["health"], dict) and outcome["health"]["ready"], outcome
    assert not isinstance(outcome["ask"], Exception), outcome["ask"]
    assert outcome["ask"].num_samples_used == 3


def test_a_killed_stub_fails_clearly_comes_back_and_leaves_nothing_behind(
    serving: TritonServer, find_stubs: Callable[[int, str], list[Any]]
) -> None:
    """Every mllm stub SIGKILLed with requests in flight: those fail at once with a clear
    error; the watchdog reloads mllm and the server answers again. Triton 2.51 never releases
    an instance that failed requests (docs/reliability.md), so the watchdog then kills the
    replaced stubs and the supervisor restarts tritonserver: afterwards each model has exactly
    its configured stubs and no zombie is left anywhere in the tree."""
    fault_server = serving
    assert fault_server.process is not None
    client = grpcclient.InferenceServerClient(url(fault_server))
    stubs = find_stubs(fault_server.process.pid, "mllm")  # every instance's stub
    assert stubs
    reloads = 'smoothguard_stub_reloads_total{model="mllm"}'
    leaks = 'smoothguard_server_restarts_total{reason="stub_leak"}'
    reloads_before, leaks_before = fault_server.metric(reloads), fault_server.metric(leaks)
    results: dict[int, Any] = {}
    killed = threading.Event()

    def one(index: int) -> None:
        # Ask again and again until the kill, so a request is in flight when it happens however
        # fast the server answers; the request that sees the kill reports it.
        while not killed.is_set():
            started = time.monotonic()
            try:
                client.infer("smoothguard", heavy_inputs(), client_timeout=TIMEOUT_S)
                results[index] = ("ok", time.monotonic() - started)
            except InferenceServerException as exc:
                results[index] = (exc, time.monotonic() - started)
                return

    workers = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for worker in workers:
        worker.start()

    def busy() -> float:
        return sum(stub.cpu_times().user for stub in stubs)

    busy_since = busy()
    deadline = time.monotonic() + 20
    while busy() < busy_since + 0.2 and time.monotonic() < deadline:
        time.sleep(0.05)
    for stub in stubs:
        stub.kill()
    killed.set()
    for worker in workers:
        worker.join(TIMEOUT_S + 10)
    errors = [r for r, _ in results.values() if isinstance(r, Exception)]
    assert errors, f"no request was in flight when the stub died: {results}"
    for error in errors:
        # A clear error naming the failed model, long before the client's deadline.
        assert error.status() != "StatusCode.DEADLINE_EXCEEDED", error
        assert "mllm" in error.message() and "MLLM calls failed" in error.message(), error
    assert client.is_server_live()
    vectors = client.infer(
        "embedder",
        [tensor("TEXT", np.array([[b"still serving"]], np.object_), "BYTES")],
        client_timeout=TIMEOUT_S,
    )
    assert vectors.as_numpy("EMBEDDING").shape[0] == 1

    # The watchdog reloads mllm: answered again, by fresh stubs.
    wait_serving(client, "the mllm stubs were killed")
    assert fault_server.metric(reloads) > reloads_before, "served again, but not by a reload"
    # The leak is cleaned: replaced stubs killed, tritonserver restarted with a drain.
    deadline = time.monotonic() + 240
    while fault_server.metric(leaks) <= leaks_before:
        assert time.monotonic() < deadline, "the leaked instance was never cleaned up"
        time.sleep(1)
    wait_serving(client, "the restart that cleaned the leak", timeout_s=300)
    for _ in range(3):  # every later request is served, not only one that found a live stub
        assert_serving(client)
    tree = psutil.Process(fault_server.process.pid)
    zombies = [p.pid for p in tree.children(recursive=True) if p.status() == psutil.STATUS_ZOMBIE]
    assert not zombies, zombies
    fresh = find_stubs(fault_server.process.pid, "mllm")
    assert len(fresh) == len(stubs) and not {p.pid for p in fresh} & {p.pid for p in stubs}
