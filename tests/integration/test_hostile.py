"""A hostile client against the server as users run it (supervisor, gateway, watchdog on).

Each case is one way a request went wrong before (issue "Hostile input and faults"): shapes
whose byte size wraps int64, a deeply nested HTTP body, internal steps called directly with
forged inputs, numerically hostile values, unclear refusals. Valid requests run alongside the
whole time. Afterwards: no stub died, no server restarted, no INTERNAL answer, no valid request
failed, each model has exactly its configured stubs and no zombies, and the server tree's RSS
is within 10% of its warm level.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from smoothguard.core.audio import write_wav
from smoothguard.core.settings import RequestOptions
from smoothguard.serving.server import ServerPorts, TritonServer
from smoothguard.serving.watchdog import STUB_NAME, live_stubs
from smoothguard.synthetic.synthpope import generate_split

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENE = generate_split("test", 1)[0]
TIMEOUT_S = 120.0
WRAP = 2**62 + 1  # x 4 x 3 x 1 byte == 12 modulo 2**64
ADDRESS = re.compile(r"0x[0-9a-f]{6,}")


@pytest.fixture(scope="module")
def hostile_server(
    tmp_path_factory: pytest.TempPathFactory, server_ports: Callable[[], ServerPorts]
) -> Iterator[TritonServer]:
    from render import render

    tmp = tmp_path_factory.mktemp("hostile")
    repo = render("cpu", tmp / "repo", ["defense.max_image_pixels=262144"])
    server = TritonServer(repo, ports=server_ports(), work_dir=tmp / "server", watchdog=True)
    server.start(timeout_s=300)
    try:
        yield server
    finally:
        server.stop()


def configured_stubs(repo: Path) -> dict[str, int]:
    """Python-backend model -> the stubs its instance groups start."""
    counts = {}
    for path in repo.glob("*/config.pbtxt"):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        if config.backend == "python":
            counts[config.name] = sum(g.count or 1 for g in config.instance_group) or 1
    return counts


def zombie_stubs(pid: int) -> list[int]:
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            orphan = STUB_NAME in " ".join(child.cmdline()) and child.ppid() == 1
            if orphan or child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def tree_rss(pid: int) -> int:
    total = 0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def tensor(name: str, array: np.ndarray, wire: str) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(array.shape), wire)
    item.set_data_from_numpy(array)
    return item


def prompt(text: bytes = b"Describe the image.", batch: bool = False) -> grpcclient.InferInput:
    array = np.array([[text]] if batch else [text], np.object_)
    return tensor("PROMPT", array, "BYTES")


def raw_request(model: str, *inputs: tuple[str, str, list[int], bytes]) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape, data in inputs:
        item = request.inputs.add()
        item.name, item.datatype = name, datatype
        item.shape.extend(shape)
        request.raw_input_contents.append(data)
    return request


def serialized(*items: bytes) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


class Outcome:
    """What one hostile call got back: a gRPC/HTTP status and a message."""

    def __init__(self, status: str, message: str, result: Any = None) -> None:
        self.status, self.message, self.result = status, message, result

    def __repr__(self) -> str:
        return f"{self.status}: {self.message[:300]}"


class Hostile:
    def __init__(self, server: TritonServer) -> None:
        self.server = server
        self.client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports.grpc}")
        channel = grpc.insecure_channel(
            f"127.0.0.1:{server.ports.grpc}", options=[("grpc.max_send_message_length", -1)]
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    def infer(self, model: str, inputs: list[grpcclient.InferInput]) -> Outcome:
        try:
            result = self.client.infer(model, inputs, client_timeout=TIMEOUT_S)
        except InferenceServerException as exc:
            return Outcome(str(exc.status()), exc.message() or "")
        return Outcome("OK", "", result)

    def raw(self, request: Any) -> Outcome:
        try:
            self.stub.ModelInfer(request, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return Outcome(str(exc.code()), exc.details() or "")
        return Outcome("OK", "")

    def http(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Outcome:
        url = f"http://127.0.0.1:{self.server.ports.http}{path}"
        request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return Outcome(str(response.status), response.read().decode(errors="replace"))
        except urllib.error.HTTPError as exc:
            return Outcome(str(exc.code), exc.read().decode(errors="replace"))


def _options(**overrides: Any) -> grpcclient.InferInput:
    """OPTIONS as the noise step writes them, with `overrides` (unknown keys included)."""
    base = RequestOptions(
        sigma=0.15, num_samples=2, seed=None, max_new_tokens=8, policy="answer",
        return_candidates=False,
    )  # fmt: skip
    text = json.dumps({**json.loads(base.to_json()), **overrides})
    return tensor("OPTIONS", np.array([text.encode()], np.object_), "BYTES")


def _fp32(name: str, shape: tuple[int, ...], value: float = 0.0) -> grpcclient.InferInput:
    return tensor(name, np.full(shape, value, np.float32), "FP32")


def _bytes(name: str, *items: bytes) -> grpcclient.InferInput:
    return tensor(name, np.array(list(items), np.object_), "BYTES")


def _http_body(*inputs: dict[str, Any]) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


Case = tuple[Callable[[], Outcome], set[str]]


def cases(h: Hostile) -> dict[str, Case]:
    """name -> (the call, the statuses that are a correct answer to it)."""
    bad = {"StatusCode.INVALID_ARGUMENT"}
    wrap_image = ("IMAGE", "UINT8", [WRAP, 4, 3], bytes(12))
    text = ("PROMPT", "BYTES", [1], serialized(b"Describe the image."))
    mllm_wrap = [
        ("IMAGE", "UINT8", [1, WRAP, 4, 3], bytes(12)),
        ("PROMPT", "BYTES", [1, 1], text[3]),
    ]
    jpeg = io.BytesIO()
    Image.fromarray(SCENE.image).save(jpeg, format="JPEG")
    broken = jpeg.getvalue()[: len(jpeg.getvalue()) // 3]
    wav = write_wav(np.sin(np.arange(1600) / 5) * 0.3)
    binary = {"binary_data_size": 12}
    http_wrap = _http_body(
        {"name": "IMAGE", "datatype": "UINT8", "shape": [2**62, 2**62, 3], "parameters": binary}
    )
    uint8_300 = _http_body(
        {"name": "IMAGE", "datatype": "UINT8", "shape": [1, 1, 3], "data": [300, 0, 0]},
        {"name": "PROMPT", "datatype": "BYTES", "shape": [1], "data": ["Describe."]},
    )
    infer_path = "/v2/models/smoothguard/infer"
    image = tensor("IMAGE", SCENE.image, "UINT8")
    hear = prompt(b"What do you hear?")
    pixels = _fp32("PIXEL_VALUES", (1, 3, 32, 32))
    return {
        # 1. shapes whose byte size wraps int64 (the stub used to abort before model code)
        "wrap smoothguard IMAGE": (
            lambda: h.raw(raw_request("smoothguard", wrap_image, text)),
            bad,
        ),
        "wrap noise IMAGE": (lambda: h.raw(raw_request("noise", wrap_image, text)), bad),
        "wrap mllm IMAGE": (lambda: h.raw(raw_request("mllm", *mllm_wrap)), bad),
        "wrap smoothguard_audio AUDIO": (
            lambda: h.raw(
                raw_request("smoothguard_audio", ("AUDIO", "FP32", [WRAP, 4], bytes(16)))
            ),
            bad,
        ),
        "wrap over HTTP": (
            lambda: h.http(
                infer_path,
                http_wrap + bytes(12),
                {"Inference-Header-Content-Length": str(len(http_wrap))},
            ),
            {"400"},
        ),
        "BYTES count forged": (
            lambda: h.raw(raw_request("embedder", ("TEXT", "BYTES", [1000, 1], serialized(b"x")))),
            bad,
        ),
        # 3. a deeply nested JSON body (tritonserver itself used to segfault)
        "nested JSON": (lambda: h.http(infer_path, b"[" * 300_000 + b"]" * 300_000), {"400"}),
        "nested JSON, gzip": (
            lambda: h.http(
                infer_path,
                gzip.compress(b"[" * 300_000 + b"]" * 300_000),
                {"Content-Encoding": "gzip"},
            ),
            {"400"},
        ),
        # 4. internal steps called directly, with forged inputs
        "generate malformed OPTIONS": (
            lambda: h.infer("generate", [pixels, prompt(), _bytes("OPTIONS", b"{not json")]),
            bad,
        ),
        "generate unknown OPTIONS key": (
            lambda: h.infer("generate", [pixels, prompt(), _options(evil=1)]),
            bad,
        ),
        "generate too many rows": (
            lambda: h.infer(
                "generate",
                [_fp32("PIXEL_VALUES", (65, 3, 32, 32)), prompt(), _options(num_samples=65)],
            ),
            bad,
        ),
        "generate rows beyond num_samples": (
            lambda: h.infer(
                "generate", [_fp32("PIXEL_VALUES", (65, 3, 32, 32)), prompt(), _options()]
            ),
            bad,
        ),
        "aggregate mismatched": (
            lambda: h.infer(
                "aggregate",
                [
                    tensor("CANDIDATES", np.array([[b"a"], [b"b"], [b"c"]], np.object_), "BYTES"),
                    _fp32("EMBEDDINGS", (2, 8), 1.0),
                    _options(),
                ],
            ),
            bad,
        ),
        # 5. numerically hostile values
        "audio 1e30": (
            lambda: h.infer("smoothguard_audio", [_fp32("AUDIO", (1600,), 1e30), hear]),
            bad | {"OK"},
        ),
        "mllm PIXEL_VALUES 1e30": (
            lambda: h.infer(
                "mllm", [_fp32("PIXEL_VALUES", (1, 3, 32, 32), 1e30), prompt(batch=True)]
            ),
            bad,
        ),
        "UINT8 300 over HTTP": (lambda: h.http(infer_path, uint8_300), {"400"}),
        "1x1 image": (
            lambda: h.infer(
                "smoothguard", [tensor("IMAGE", np.zeros((1, 1, 3), np.uint8), "UINT8"), prompt()]
            ),
            bad,
        ),
        # 6. refusals that must be clear
        "no PROMPT": (lambda: h.infer("smoothguard", [image]), bad),
        "undecodable image": (
            lambda: h.infer("smoothguard", [_bytes("IMAGE_BYTES", broken), prompt()]),
            bad,
        ),
        "undecodable audio": (
            lambda: h.infer("smoothguard_audio", [_bytes("AUDIO_BYTES", wav[:30]), hear]),
            bad,
        ),
    }


def valid_load(h: Hostile, stop: threading.Event, failures: list[str], count: list[int]) -> None:
    """Valid defended and undefended requests, back to back, until stopped."""
    wav = np.sin(np.arange(1600) / 5).astype(np.float32) * 0.3
    calls = [
        ("smoothguard", lambda: [tensor("IMAGE", SCENE.image, "UINT8"), prompt(),
                                 tensor("NUM_SAMPLES", np.array([4], np.int32), "INT32")]),
        ("mllm", lambda: [tensor("IMAGE", SCENE.image[None], "UINT8"), prompt(batch=True)]),
        ("smoothguard_audio", lambda: [tensor("AUDIO", wav, "FP32"), prompt(b"What do you hear?"),
                                       tensor("NUM_SAMPLES", np.array([4], np.int32), "INT32")]),
    ]  # fmt: skip
    i = 0
    while not stop.is_set():
        model, inputs = calls[i % len(calls)]
        outcome = h.infer(model, inputs())
        if outcome.status != "OK":
            failures.append(f"{model}: {outcome}")
        count[0] += 1
        i += 1


def test_a_hostile_client_brings_nothing_down(hostile_server: TritonServer) -> None:
    server = hostile_server
    assert server.process is not None
    h = Hostile(server)
    stop, failures, sent = threading.Event(), [], [0]
    warmup = threading.Thread(target=valid_load, args=(h, stop, failures, sent))
    warmup.start()  # every model answers before RSS is taken
    time.sleep(20)
    stop.set()
    warmup.join(TIMEOUT_S)
    assert not failures, failures
    pid = server.process.pid
    stubs_before = live_stubs(pid)
    rss_warm = tree_rss(pid)

    stop.clear()
    sent[0] = 0
    loads = [threading.Thread(target=valid_load, args=(h, stop, failures, sent)) for _ in "ab"]
    for load in loads:
        load.start()
    outcomes: dict[str, Outcome] = {}
    try:
        for _ in range(3):  # each case more than once: a stub that died would show
            for name, (call, expected) in cases(h).items():
                outcome = call()
                outcomes[name] = outcome
                assert outcome.status in expected, f"{name}: {outcome}"
                assert not ADDRESS.search(outcome.message), f"{name}: {outcome}"
                assert "deadlock" not in outcome.message, f"{name}: {outcome}"
    finally:
        stop.set()
        for load in loads:
            load.join(TIMEOUT_S)
    assert sent[0] > 0 and not failures, failures
    for name, outcome in outcomes.items():
        print(f"{name}: {outcome}")  # the record, with -s
    print(f"valid requests alongside: {sent[0]}, failed: {len(failures)}")
    # Messages name the input at fault.
    assert "IMAGE" in outcomes["wrap smoothguard IMAGE"].message
    assert "PROMPT" in outcomes["no PROMPT"].message
    assert "OPTIONS" in outcomes["generate malformed OPTIONS"].message
    audio = outcomes["audio 1e30"]
    if audio.status == "OK":  # accepted only with consistent evidence
        sizes = audio.result.as_numpy("CLUSTER_SIZES")
        assert int(sizes.sum()) == int(audio.result.as_numpy("NUM_SAMPLES_USED")[0])

    # Nothing died, nothing restarted, nothing leaked.
    assert live_stubs(pid) == stubs_before, "a stub died or was replaced"
    assert server.metric("smoothguard_server_restarts_total", 'reason="exited"') == 0
    counts: dict[str, int] = {}
    for model in live_stubs(pid).values():
        counts[model] = counts.get(model, 0) + 1
    assert counts == configured_stubs(server.model_repository)
    assert zombie_stubs(pid) == []
    rss_after = tree_rss(pid)
    assert rss_after <= rss_warm * 1.10, (
        f"RSS {rss_warm / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB"
    )
    # A direct call to an internal step is not a defended request.
    before = defended_total(server)
    for _ in range(3):
        candidates = tensor("CANDIDATES", np.array([[b"a"], [b"a"], [b"b"]], np.object_), "BYTES")
        embeddings = tensor("EMBEDDINGS", np.eye(3, 8, dtype=np.float32), "FP32")
        direct = h.infer("aggregate", [candidates, embeddings, _options(num_samples=3)])
        assert direct.status == "OK", direct
    assert defended_total(server) == before, "direct calls to aggregate were counted"


def defended_total(server: TritonServer) -> float:
    url = f"http://127.0.0.1:{server.ports.metrics}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(
        float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("smoothguard_requests_total{")
    )
