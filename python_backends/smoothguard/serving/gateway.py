"""The server's public face: every request is checked here before tritonserver sees it.

Triton 2.51 (the server in the nvidia-pytriton wheel) has two crashes that a tiny request
triggers, both in its own code, before any model of ours runs:
- a tensor whose declared shape makes its byte size wrap around int64 (IMAGE [2**62 + 1, 4, 3]
  with 12 bytes of data) passes Triton's size check, and the Python backend stub aborts
  materialising it ("array is too big"): the model is down until it is reloaded;
- a deeply nested JSON body on the HTTP endpoint makes tritonserver itself exit with SIGSEGV.
docs/reliability.md has reproducers. So tritonserver listens on loopback only, and this
gateway holds the public ports: gRPC (checked, then forwarded as the same bytes), HTTP
(body size, JSON depth, shapes and values checked, then forwarded) and metrics (Triton's plus
the supervisor's own). It also admits and drains requests for the supervisor: a stopping or
restarting server answers UNAVAILABLE at once instead of failing requests half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from tritonclient.grpc import service_pb2

log = logging.getLogger("smoothguard.serving.gateway")

SERVICE = "/inference.GRPCInferenceService/"
# Bytes per element of each fixed-size Triton datatype (BYTES is length-prefixed, variable).
ITEM_SIZE = {
    "BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
    "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8,
}  # fmt: skip
INT_RANGE = {
    "UINT8": (0, 2**8 - 1), "INT8": (-(2**7), 2**7 - 1), "UINT16": (0, 2**16 - 1),
    "INT16": (-(2**15), 2**15 - 1), "UINT32": (0, 2**32 - 1), "INT32": (-(2**31), 2**31 - 1),
    "UINT64": (0, 2**64 - 1), "INT64": (-(2**63), 2**63 - 1),
}  # fmt: skip
# Typed (non-raw) gRPC contents: the field of InferTensorContents each datatype uses.
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
# Metadata a proxy must not copy onto its own upstream call.
HOP_METADATA = {"user-agent", "content-type", "te", "host", "accept-encoding"}
HOP_HEADERS = {
    "connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade",
    "proxy-authenticate", "proxy-authorization", "te", "trailer",
}  # fmt: skip
UNLIMITED_MESSAGES = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Refused(Exception):
    """A request the gateway will not forward; the message goes back to the caller."""


@dataclass(frozen=True)
class Limits:
    """What one request may declare. Generous on purpose: the models apply the real bounds
    (max_image_pixels, ...); these only keep every size far from integer overflow."""

    max_elements: int = 2**31  # per tensor; x 8 bytes stays far below 2**63
    max_request_bytes: int = 2**31 - 1  # whole message / body (Triton's own gRPC limit)
    max_json_depth: int = 64  # nesting of an HTTP JSON body (Triton's inputs need 3 + shape)


def element_count(name: str, shape: Sequence[Any], limits: Limits) -> int:
    """Elements of a declared shape, computed exactly (Python ints cannot wrap)."""
    count = 1
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise Refused(f"input '{name}': shape {list(shape)} must be non-negative integers")
        count *= dim
        if count > limits.max_elements:
            raise Refused(
                f"input '{name}': shape {list(shape)} declares {math.prod(shape)} elements, "
                f"over the limit of {limits.max_elements}"
            )
    return count


def count_bytes_elements(name: str, data: bytes | memoryview, expected: int) -> None:
    """Check that a serialised BYTES tensor (4-byte little-endian length, then the bytes, per
    element) holds exactly the elements its shape declares."""
    view = memoryview(data)
    offset = found = 0
    while offset < len(view):
        if len(view) - offset < 4 or found > expected:
            break
        size = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4 + size
        found += 1
    if offset != len(view) or found != expected:
        raise Refused(
            f"input '{name}': BYTES data does not hold the {expected} elements its shape declares"
        )


def check_tensor(
    name: str, datatype: str, shape: Sequence[Any], nbytes: int | None, limits: Limits
) -> int:
    """Refuse a tensor whose shape, type and data size disagree; its element count."""
    count = element_count(name, shape, limits)
    if datatype not in ITEM_SIZE and datatype != "BYTES":
        raise Refused(f"input '{name}': unknown datatype {datatype!r}")
    if nbytes is not None and datatype != "BYTES" and nbytes != count * ITEM_SIZE[datatype]:
        raise Refused(
            f"input '{name}': shape {list(shape)} of {datatype} needs "
            f"{count * ITEM_SIZE[datatype]} bytes, the request carries {nbytes}"
        )
    return count


def check_grpc_infer(request: service_pb2.ModelInferRequest, limits: Limits) -> None:
    """Every input of a gRPC inference request, raw or typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise Refused(
            f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents"
        )
    for index, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if raw:
            data = raw[index]
            count = check_tensor(tensor.name, tensor.datatype, shape, len(data), limits)
            if tensor.datatype == "BYTES":
                count_bytes_elements(tensor.name, data, count)
            continue
        count = check_tensor(tensor.name, tensor.datatype, shape, None, limits)
        if tensor.HasField("contents"):
            field_name = CONTENTS_FIELD.get(tensor.datatype)
            given = len(getattr(tensor.contents, field_name)) if field_name else 0
            if given != count:
                raise Refused(
                    f"input '{tensor.name}': shape {shape} declares {count} elements, the "
                    f"contents hold {given}"
                )


def json_depth_ok(body: bytes, max_depth: int) -> bool:
    """Whether no array or object in a JSON text nests deeper than `max_depth` (strings
    skipped). A linear scan: Triton's parser is the one that must never see a deep body."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def _flatten(data: Any) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def check_json_value(name: str, datatype: str, value: Any) -> None:
    """A JSON element that Triton would silently wrap or truncate is refused instead."""
    if datatype == "BYTES":
        if not isinstance(value, str):
            raise Refused(f"input '{name}': BYTES elements must be JSON strings")
        return
    if datatype == "BOOL":
        if not isinstance(value, bool):
            raise Refused(f"input '{name}': BOOL elements must be true or false")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused(f"input '{name}': {datatype} elements must be JSON numbers")
    if datatype in INT_RANGE:
        low, high = INT_RANGE[datatype]
        if not isinstance(value, int) or not low <= value <= high:
            raise Refused(
                f"input '{name}': {value!r} is not a {datatype} (integers {low} to {high})"
            )


def check_http_infer(header: Mapping[str, Any], binary_bytes: int | None, limits: Limits) -> None:
    """The JSON part of an HTTP inference request (KServe v2 + Triton's binary extension)."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise Refused("the request body needs an 'inputs' list")
    binary_total = 0
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise Refused("each entry of 'inputs' must be an object")
        name = str(tensor.get("name", "?"))
        shape, datatype = tensor.get("shape"), tensor.get("datatype")
        if not isinstance(shape, list) or not isinstance(datatype, str):
            raise Refused(f"input '{name}' needs a 'shape' list and a 'datatype' string")
        parameters = tensor.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise Refused(f"input '{name}': binary_data_size must be a non-negative integer")
            count = check_tensor(name, datatype, shape, size, limits)
            binary_total += size
            continue
        count = check_tensor(name, datatype, shape, None, limits)
        if "data" in tensor:
            values = _flatten(tensor["data"])
            if len(values) != count:
                raise Refused(
                    f"input '{name}': shape {shape} declares {count} elements, 'data' holds "
                    f"{len(values)}"
                )
            for value in values:
                check_json_value(name, datatype, value)
    if binary_bytes is not None and binary_total > binary_bytes:
        raise Refused(
            f"the inputs declare {binary_total} bytes of binary data, the body carries "
            f"{binary_bytes}"
        )


@dataclass
class GatewayStats:
    """What the gateway saw, for its metrics (thread-safe enough: one event loop writes)."""

    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    in_flight: int = 0


@dataclass
class GatewayConfig:
    """Where the gateway listens and where tritonserver is."""

    bind: str  # e.g. 127.0.0.1 (default of `make serve`) or 0.0.0.0 (containers)
    grpc_port: int
    http_port: int
    metrics_port: int
    upstream_grpc: str  # host:port of tritonserver's gRPC on loopback
    upstream_http: str  # http://127.0.0.1:port
    upstream_metrics: str  # http://127.0.0.1:port/metrics
    limits: Limits = field(default_factory=Limits)
    # TLS for the public gRPC port: PEM bytes (server key, certificate, optional client CA)
    tls: tuple[bytes, bytes, bytes | None] | None = None
    # Extra Prometheus text lines from the supervisor (restarts, stub reloads).
    extra_metrics: Callable[[], Iterable[str]] | None = None


class Gateway:
    """gRPC, HTTP and metrics fronts on one asyncio loop in a background thread."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.stats = GatewayStats()
        self._accepting = True
        self.restarting = False
        self._reason = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._grpc_server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []

    # -- lifecycle (called from the supervisor's thread) ------------------------------------
    def start(self, timeout_s: float = 30.0) -> Gateway:
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise TimeoutError("the gateway did not start")
        if self._error is not None:
            raise RuntimeError(f"the gateway could not start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=15)

    def retarget(self, upstream_grpc: str, upstream_http: str, upstream_metrics: str) -> None:
        """Forward to a tritonserver on other loopback ports from now on (the supervisor picks
        new ones after a failed start). Calls still on the old channel get a grace period."""
        self.config = replace(
            self.config,
            upstream_grpc=upstream_grpc,
            upstream_http=upstream_http,
            upstream_metrics=upstream_metrics,
        )
        if self._loop is not None and self._channel is not None:
            future = asyncio.run_coroutine_threadsafe(self._reconnect(), self._loop)
            future.result(timeout=15)
        log.warning("gateway now forwards to tritonserver %s", upstream_grpc)

    async def _reconnect(self) -> None:
        old, self._channel = self._channel, self._upstream_channel()
        if old is not None:
            await old.close(grace=5)

    def _upstream_channel(self) -> grpc.aio.Channel:
        # Reconnect within a second of tritonserver coming (back) up: gRPC's default backoff
        # grows to minutes while the server starts or restarts, failing calls long after.
        return grpc.aio.insecure_channel(
            self.config.upstream_grpc, options=[*UNLIMITED_MESSAGES, *FAST_RECONNECT]
        )

    def refuse_new(self, reason: str, *, restarting: bool = False) -> None:
        """From now on inference gets UNAVAILABLE with `reason`; health says not ready.
        While `restarting`, liveness still says yes: the supervisor is bringing tritonserver
        back, and a probe that killed the pod now would only make that slower."""
        self._reason, self._accepting, self.restarting = reason, False, restarting

    def admit(self) -> None:
        self._accepting, self.restarting = True, False

    @property
    def in_flight(self) -> int:
        return self.stats.in_flight

    def drain(self, timeout_s: float, poll_s: float = 0.05) -> int:
        """Refuse new requests and wait for those in flight; how many were still running."""
        self.refuse_new("the server is stopping")
        deadline = time.monotonic() + timeout_s
        while self.stats.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(poll_s)
        return self.stats.in_flight

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it
            self._error = exc
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    async def _serve(self) -> None:
        cfg = self.config
        self._channel = self._upstream_channel()
        # No keep-alive towards Triton: on SIGTERM it waits (up to half its exit timeout) for
        # every open HTTP connection to close, and an idle pooled one never would.
        # Bodies pass through untouched: the caller's Accept-Encoding decides whether Triton
        # compresses (aiohttp must not add its own), and its Content-Encoding comes back.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
        )
        server = grpc.aio.server(options=UNLIMITED_MESSAGES)
        server.add_generic_rpc_handlers([_GrpcForwarder(self)])
        address = f"{cfg.bind}:{cfg.grpc_port}"
        if cfg.tls is not None:
            key, cert, client_ca = cfg.tls
            credentials = grpc.ssl_server_credentials(
                [(key, cert)],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
        if bound == 0:
            raise OSError(f"cannot bind gRPC to {address}")
        await server.start()
        self._grpc_server = server
        for port, handler in ((cfg.http_port, self._http), (cfg.metrics_port, self._metrics)):
            app = web.Application(client_max_size=cfg.limits.max_request_bytes)
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, cfg.bind, port, reuse_address=True).start()
            self._runners.append(runner)
        log.info(
            "gateway on %s: gRPC :%d, HTTP :%d, metrics :%d -> tritonserver %s",
            cfg.bind, cfg.grpc_port, cfg.http_port, cfg.metrics_port, cfg.upstream_grpc,
        )  # fmt: skip

    async def _shutdown(self) -> None:
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=2)
        for runner in self._runners:
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()
        if self._channel is not None:
            await self._channel.close()

    # -- shared by the fronts ----------------------------------------------------------------
    def _refuse(self, protocol: str, reason: str) -> None:
        self.stats.refused[(protocol, reason)] += 1

    async def _tracked(self, call: Awaitable[Any]) -> Any:
        self.stats.in_flight += 1
        try:
            return await call
        finally:
            self.stats.in_flight -= 1

    # -- HTTP front ---------------------------------------------------------------------------
    async def _http(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.path
        body = await request.read() if request.can_read_body else b""
        is_infer = (
            request.method == "POST" and path.startswith("/v2/models/") and path.endswith("/infer")
        )
        if path == "/v2/health/ready" and not self._accepting:
            return web.Response(status=503, text=self._reason)
        if path == "/v2/health/live" and self.restarting:
            return web.Response(status=200, text=self._reason)
        if body:
            try:
                self._check_http_body(request, body, is_infer)
            except Refused as exc:
                self._refuse("http", "invalid")
                return web.json_response({"error": str(exc)}, status=400)
        if is_infer and not self._accepting:
            self._refuse("http", "unavailable")
            return web.json_response({"error": self._reason}, status=503)
        # aiohttp has already decompressed a gzip/deflate request body (so the checks above saw
        # what Triton would parse): forward it plain.
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in HOP_HEADERS and k.lower() != "content-encoding"
        }
        url = self.config.upstream_http + path
        if request.rel_url.query_string:
            url += "?" + request.rel_url.query_string
        assert self._session is not None

        async def forward() -> web.Response:
            assert self._session is not None
            async with self._session.request(
                request.method, url, data=body or None, headers=headers
            ) as upstream:
                payload = await upstream.read()
                out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
                return web.Response(status=upstream.status, body=payload, headers=out)

        try:
            response = await (self._tracked(forward()) if is_infer else forward())
        except aiohttp.ClientError as exc:
            return web.json_response({"error": f"tritonserver is not reachable: {exc}"}, status=503)
        return response

    def _check_http_body(self, request: web.Request, body: bytes, is_infer: bool) -> None:
        limits = self.config.limits
        header_length = request.headers.get("Inference-Header-Content-Length")
        json_part, binary = body, None
        if header_length is not None:
            try:
                length = int(header_length)
            except ValueError as exc:
                raise Refused("Inference-Header-Content-Length must be an integer") from exc
            if not 0 <= length <= len(body):
                raise Refused(
                    f"Inference-Header-Content-Length {length} is outside the body "
                    f"({len(body)} bytes)"
                )
            json_part, binary = body[:length], len(body) - length
        if not json_depth_ok(json_part, limits.max_json_depth):
            raise Refused(f"the JSON body nests deeper than {limits.max_json_depth} levels")
        if not is_infer:
            return
        try:
            header = json.loads(json_part)
        except (ValueError, RecursionError) as exc:
            raise Refused(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(header, dict):
            raise Refused("the body must be a JSON object")
        check_http_infer(header, binary, limits)

    # -- metrics front ------------------------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        if request.rel_url.path != "/metrics":
            return web.Response(status=404, text="metrics are at /metrics")
        assert self._session is not None
        upstream = ""
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with self._session.get(
                self.config.upstream_metrics, timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                upstream = await response.text()
        return web.Response(text=upstream + "".join(f"{line}\n" for line in self.own_metrics()))

    def own_metrics(self) -> list[str]:
        lines = [
            "# HELP smoothguard_gateway_refused_total Requests the gateway refused before "
            "tritonserver saw them.",
            "# TYPE smoothguard_gateway_refused_total counter",
        ]
        for (protocol, reason), count in sorted(self.stats.refused.items()):
            lines.append(
                f'smoothguard_gateway_refused_total{{protocol="{protocol}",reason="{reason}"}} '
                f"{count}"
            )
        lines += [
            "# HELP smoothguard_gateway_in_flight Inference requests inside the server now.",
            "# TYPE smoothguard_gateway_in_flight gauge",
            f"smoothguard_gateway_in_flight {self.stats.in_flight}",
        ]
        if self.config.extra_metrics is not None:
            lines += list(self.config.extra_metrics())
        return lines


def _metadata(context: grpc.aio.ServicerContext) -> list[tuple[str, str | bytes]]:
    return [
        (key, value)
        for key, value in (context.invocation_metadata() or ())
        if not key.startswith(":") and not key.startswith("grpc-") and key not in HOP_METADATA
    ]


class _GrpcForwarder(grpc.GenericRpcHandler):
    """Every method of Triton's GRPCInferenceService, as raw bytes."""

    STREAMING = frozenset({"ModelStreamInfer"})

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        if not method.startswith(SERVICE):
            return None
        name = method[len(SERVICE) :]
        if name in self.STREAMING:
            return grpc.stream_stream_rpc_method_handler(self._stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method, name))

    def _unary(self, method: str, name: str) -> Callable[..., Awaitable[bytes]]:
        gateway = self.gateway
        limits = gateway.config.limits

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if name == "ServerReady" and not gateway._accepting:
                return service_pb2.ServerReadyResponse(ready=False).SerializeToString()
            if name == "ServerLive" and gateway.restarting:
                return service_pb2.ServerLiveResponse(live=True).SerializeToString()
            if name == "ModelInfer":
                try:
                    check_grpc_infer(service_pb2.ModelInferRequest.FromString(request), limits)
                except Refused as exc:
                    gateway._refuse("grpc", "invalid")
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                except Exception as exc:  # noqa: BLE001 - a message protobuf cannot parse
                    gateway._refuse("grpc", "invalid")
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"malformed ModelInferRequest: {exc}"
                    )
                if not gateway._accepting:
                    gateway._refuse("grpc", "unavailable")
                    await context.abort(grpc.StatusCode.UNAVAILABLE, gateway._reason)
            assert gateway._channel is not None
            call = gateway._channel.unary_unary(method)(
                request, metadata=_metadata(context), timeout=context.time_remaining()
            )
            try:
                return await (gateway._tracked(call) if name == "ModelInfer" else call)
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), _upstream_details(exc))
            raise AssertionError("unreachable")

        return handle

    def _stream(self, method: str) -> Callable[..., Any]:
        gateway = self.gateway
        limits = gateway.config.limits

        async def handle(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async def checked() -> Any:
                async for raw in requests:
                    try:
                        check_grpc_infer(service_pb2.ModelInferRequest.FromString(raw), limits)
                    except Refused as exc:
                        gateway._refuse("grpc", "invalid")
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    if not gateway._accepting:
                        gateway._refuse("grpc", "unavailable")
                        await context.abort(grpc.StatusCode.UNAVAILABLE, gateway._reason)
                    yield raw

            assert gateway._channel is not None
            call = gateway._channel.stream_stream(method)(
                checked(), metadata=_metadata(context), timeout=context.time_remaining()
            )
            gateway.stats.in_flight += 1
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), _upstream_details(exc))
            finally:
                gateway.stats.in_flight -= 1

        return handle


def _upstream_details(exc: grpc.aio.AioRpcError) -> str:
    if exc.code() == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower():
        return "tritonserver is not reachable (restarting?); try again"
    return exc.details() or exc.code().name
