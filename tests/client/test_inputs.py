"""Request tensors match the wire interface exactly; answers decode; retries only when useful.

No server: inputs are inspected as tritonclient InferInput objects, answers are real
tritonclient InferResults built from response protos, and the transport is a fake.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.grpc import service_pb2
from tritonclient.utils import (
    InferenceServerException,
    deserialize_bytes_tensor,
    serialize_byte_tensor,
)

import smoothguard_client.client as client_module
from smoothguard_client import (
    AsyncSmoothGuardClient,
    DefendedAnswer,
    RetryPolicy,
    SmoothGuardClient,
    SmoothGuardError,
    build_ask_inputs,
    build_embed_inputs,
    build_undefended_inputs,
)

PIXELS = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)


def _png(pixels: np.ndarray = PIXELS) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _signature(inputs: Sequence[grpcclient.InferInput]) -> dict[str, tuple[str, list[int]]]:
    return {i.name(): (i.datatype(), list(i.shape())) for i in inputs}


def _value(item: grpcclient.InferInput) -> np.ndarray:
    """What the server would read back from the tensor's raw content."""
    raw = item._get_content()
    if item.datatype() == "BYTES":
        return deserialize_bytes_tensor(raw).reshape(item.shape())
    dtypes = {"UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}
    dtypes["BOOL"] = np.bool_
    return np.frombuffer(raw, dtype=dtypes[item.datatype()]).reshape(item.shape())


def _by_name(inputs: Sequence[grpcclient.InferInput]) -> dict[str, np.ndarray]:
    return {i.name(): _value(i) for i in inputs}


# ---------------------------------------------------------------- smoothguard inputs


def test_minimal_request_sends_only_image_and_prompt() -> None:
    inputs = build_ask_inputs(PIXELS, "What is shown?")
    assert _signature(inputs) == {"IMAGE": ("UINT8", [4, 6, 3]), "PROMPT": ("BYTES", [1])}
    values = _by_name(inputs)
    np.testing.assert_array_equal(values["IMAGE"], PIXELS)
    assert values["PROMPT"].tolist() == [b"What is shown?"]


def test_encoded_image_goes_as_image_bytes() -> None:
    data = _png()
    inputs = build_ask_inputs(data, "q")
    assert _signature(inputs) == {"IMAGE_BYTES": ("BYTES", [1]), "PROMPT": ("BYTES", [1])}
    assert _by_name(inputs)["IMAGE_BYTES"].tolist() == [data]


def test_every_option_has_its_wire_name_type_and_shape() -> None:
    inputs = build_ask_inputs(
        PIXELS,
        "¿Qué hay? 猫",
        sigma=0.25,
        num_samples=8,
        seed=2**40,
        max_new_tokens=16,
        policy="abstain",
        return_candidates=True,
    )
    assert [i.name() for i in inputs] == [
        "IMAGE", "PROMPT", "SIGMA", "NUM_SAMPLES", "SEED", "MAX_NEW_TOKENS", "POLICY",
        "RETURN_CANDIDATES",
    ]  # fmt: skip
    assert _signature(inputs) == {
        "IMAGE": ("UINT8", [4, 6, 3]),
        "PROMPT": ("BYTES", [1]),
        "SIGMA": ("FP32", [1]),
        "NUM_SAMPLES": ("INT32", [1]),
        "SEED": ("INT64", [1]),
        "MAX_NEW_TOKENS": ("INT32", [1]),
        "POLICY": ("BYTES", [1]),
        "RETURN_CANDIDATES": ("BOOL", [1]),
    }
    values = _by_name(inputs)
    assert values["PROMPT"][0].decode("utf-8") == "¿Qué hay? 猫"
    assert values["SIGMA"].tolist() == [0.25]
    assert values["NUM_SAMPLES"].tolist() == [8]
    assert values["SEED"].tolist() == [2**40]
    assert values["MAX_NEW_TOKENS"].tolist() == [16]
    assert values["POLICY"].tolist() == [b"abstain"]
    assert values["RETURN_CANDIDATES"].tolist() == [True]


def test_unset_options_are_not_sent() -> None:
    names = [i.name() for i in build_ask_inputs(PIXELS, "q", seed=0, return_candidates=False)]
    assert names == ["IMAGE", "PROMPT", "SEED"]  # seed=0 is set; False candidates is not


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"policy": "ignore"}, ValueError, "policy must be one of answer, monitor"),
        ({"num_samples": 2**31}, ValueError, "num_samples must fit in int32"),
        ({"num_samples": 2.5}, TypeError, "num_samples must be an integer"),
        ({"num_samples": True}, TypeError, "num_samples must be an integer"),
        ({"seed": "7"}, TypeError, "seed must be an integer"),
        ({"sigma": float("nan")}, ValueError, "sigma must be finite"),
        ({"sigma": "0.1"}, TypeError, "sigma must be a number"),
    ],
)
def test_bad_options_fail_locally(options: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        build_ask_inputs(PIXELS, "q", **options)


def test_prompt_must_be_text() -> None:
    with pytest.raises(TypeError, match="prompt must be a str"):
        build_ask_inputs(PIXELS, 42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- mllm and embedder inputs


def test_undefended_request_is_a_batch_of_one_raw_image() -> None:
    inputs = build_undefended_inputs(_png(), "q", max_new_tokens=5)
    assert _signature(inputs) == {
        "IMAGE": ("UINT8", [1, 4, 6, 3]),
        "PROMPT": ("BYTES", [1, 1]),
        "MAX_NEW_TOKENS": ("INT32", [1, 1]),
    }
    np.testing.assert_array_equal(_by_name(inputs)["IMAGE"][0], PIXELS)  # decoded locally
    assert [i.name() for i in build_undefended_inputs(PIXELS, "q")] == ["IMAGE", "PROMPT"]


def test_embed_request_is_one_text_per_row() -> None:
    (item,) = build_embed_inputs(["a", "bé", "c"])
    assert (item.name(), item.datatype(), item.shape()) == ("TEXT", "BYTES", [3, 1])
    assert _value(item).reshape(-1).tolist() == [b"a", "bé".encode(), b"c"]
    with pytest.raises(ValueError, match="empty"):
        build_embed_inputs([])


# ---------------------------------------------------------------- answers


def _response(outputs: dict[str, tuple[str, np.ndarray]], model: str = "smoothguard") -> Any:
    response = service_pb2.ModelInferResponse(model_name=model)
    for name, (datatype, array) in outputs.items():
        tensor = response.outputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.extend(array.shape)
        if datatype == "BYTES":
            raw = serialize_byte_tensor(array)
            response.raw_output_contents.append(raw.item() if raw.size else b"")
        else:
            response.raw_output_contents.append(array.tobytes())
    return grpcclient.InferResult(response)


def _strings(*values: str) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=np.object_)


def defended_result(*, candidates: Sequence[str] = (), outvoted: bool = True) -> Any:
    return _response(
        {
            "TEXT": ("BYTES", _strings("a cat")),
            "DECISION": ("BYTES", _strings("answered")),
            "REASON": ("BYTES", _strings("original outvoted 3 to 1")),
            "CHOSEN_INDEX": ("INT32", np.array([2], dtype=np.int32)),
            "CLUSTER_SIZES": ("INT32", np.array([3, 1], dtype=np.int32)),
            "AGREEMENT": ("FP32", np.array([0.75], dtype=np.float32)),
            "ORIGINAL_OUTVOTED": ("BOOL", np.array([outvoted])),
            "TIE": ("BOOL", np.array([False])),
            "NUM_SAMPLES_USED": ("INT32", np.array([4], dtype=np.int32)),
            "ORIGINAL_TEXT": ("BYTES", _strings("a dog")),
            "CANDIDATES": ("BYTES", _strings(*candidates)),
        }
    )


def test_answer_decodes_every_output() -> None:
    answer = DefendedAnswer.from_infer_result(
        defended_result(candidates=["a dog", "a cat", "a cat", "a cat"]), latency_s=1.5
    )
    assert answer == DefendedAnswer(
        text="a cat",
        decision="answered",
        reason="original outvoted 3 to 1",
        chosen_index=2,
        cluster_sizes=(3, 1),
        agreement=0.75,
        original_outvoted=True,
        tie=False,
        num_samples_used=4,
        original_text="a dog",
        candidates=("a dog", "a cat", "a cat", "a cat"),
        latency_s=1.5,
        model="smoothguard",
    )
    assert type(answer.chosen_index) is int and type(answer.original_outvoted) is bool
    data = answer.to_dict()
    assert data["cluster_sizes"] == [3, 1] and data["candidates"][0] == "a dog"
    assert json.loads(json.dumps(data)) == data


def test_answer_without_candidates_has_empty_tuple() -> None:
    answer = DefendedAnswer.from_infer_result(defended_result(), 0.1)
    assert answer.candidates == ()


def test_missing_output_is_an_invalid_response() -> None:
    broken = _response({"TEXT": ("BYTES", _strings("x"))})
    with pytest.raises(SmoothGuardError) as info:
        DefendedAnswer.from_infer_result(broken, 0.1)
    assert info.value.status == "INVALID_RESPONSE"


# ---------------------------------------------------------------- errors and retries


def _server_error(code: str, message: str = "boom") -> InferenceServerException:
    return InferenceServerException(msg=message, status=f"StatusCode.{code}")


def test_error_keeps_the_bare_status_name() -> None:
    error = SmoothGuardError.from_exception(_server_error("INVALID_ARGUMENT", "PROMPT is empty"))
    assert (error.status, error.message) == ("INVALID_ARGUMENT", "PROMPT is empty")
    assert str(error) == "INVALID_ARGUMENT: PROMPT is empty"
    assert not error.is_retryable and error.is_invalid_argument
    assert SmoothGuardError.from_exception(_server_error("UNAVAILABLE")).is_retryable
    assert not SmoothGuardError.from_exception(_server_error("DEADLINE_EXCEEDED")).is_retryable
    assert SmoothGuardError.from_exception(InferenceServerException("local")).status == "UNKNOWN"


def test_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(retries=5, backoff_s=0.5, max_backoff_s=3.0)
    unavailable = SmoothGuardError("UNAVAILABLE", "down")
    assert [policy.delay_s(a, unavailable) for a in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, None]
    assert policy.delay_s(0, SmoothGuardError("INVALID_ARGUMENT", "bad")) is None
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)


class FakeTriton:
    """Stands in for tritonclient's client: scripted failures, then canned answers."""

    def __init__(self, failures: Sequence[InferenceServerException] = ()) -> None:
        self.failures = list(failures)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.unknown_models: set[str] = set()

    def _next(self, method: str, kwargs: dict[str, Any]) -> Any:
        self.calls.append((method, kwargs))
        if self.failures:
            raise self.failures.pop(0)
        if method == "infer" and kwargs["model_name"] == "embedder":
            texts = _value(kwargs["inputs"][0]).reshape(-1)
            rows = np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
            return _response({"EMBEDDING": ("FP32", rows)}, "embedder")
        if method == "infer" and kwargs["model_name"] == "mllm":
            return _response({"TEXT": ("BYTES", _strings("a dog").reshape(1, 1))}, "mllm")
        if method == "infer":
            return defended_result()
        if method == "get_server_metadata":
            return SimpleNamespace(name="triton", version="2.51.0")
        if method == "is_model_ready" and kwargs["model_name"] in self.unknown_models:
            raise _server_error("NOT_FOUND", "unknown model")
        return True

    def __getattr__(self, method: str) -> Any:
        return lambda **kwargs: self._next(method, kwargs)

    def close(self) -> None:
        pass


class AsyncFakeTriton(FakeTriton):
    def __getattr__(self, method: str) -> Any:
        async def call(**kwargs: Any) -> Any:
            return self._next(method, kwargs)

        return call

    async def close(self) -> None:
        pass


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", recorded.append)
    return recorded


def _sync(fake: FakeTriton, **options: Any) -> SmoothGuardClient:
    client = SmoothGuardClient("127.0.0.1:1", **options)
    client.close()
    client._triton = fake  # type: ignore[assignment]
    return client


def test_unavailable_is_retried_with_backoff(sleeps: list[float]) -> None:
    fake = FakeTriton([_server_error("UNAVAILABLE"), _server_error("UNAVAILABLE")])
    client = _sync(fake, retries=2, backoff_s=0.1, timeout_s=5.0)
    answer = client.ask(PIXELS, "q", seed=3, request_id="req-1")
    assert answer.text == "a cat" and answer.model == "smoothguard"
    assert sleeps == [0.1, 0.2]
    assert len(fake.calls) == 3
    method, kwargs = fake.calls[-1]
    assert (method, kwargs["model_name"], kwargs["request_id"]) == ("infer", "smoothguard", "req-1")
    assert kwargs["client_timeout"] == 5.0


def test_gives_up_after_the_configured_retries(sleeps: list[float]) -> None:
    fake = FakeTriton([_server_error("UNAVAILABLE")] * 3)
    with pytest.raises(SmoothGuardError) as info:
        _sync(fake, retries=1, backoff_s=0.1).ask(PIXELS, "q")
    assert info.value.status == "UNAVAILABLE"
    assert len(fake.calls) == 2 and sleeps == [0.1]


@pytest.mark.parametrize("code", ["INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "INTERNAL"])
def test_other_errors_are_not_retried(sleeps: list[float], code: str) -> None:
    fake = FakeTriton([_server_error(code, "PROMPT is empty")])
    with pytest.raises(SmoothGuardError) as info:
        _sync(fake).ask(PIXELS, "q")
    assert (info.value.status, info.value.message) == (code, "PROMPT is empty")
    assert len(fake.calls) == 1 and sleeps == []


def test_undefended_and_embed_use_their_models(sleeps: list[float]) -> None:
    fake = FakeTriton()
    client = _sync(fake)
    assert client.ask_undefended(PIXELS, "q") == "a dog"
    assert fake.calls[-1][1]["model_name"] == "mllm"
    embeddings = client.embed(["a", "bb", "ccc", "dddd", "e"], batch_size=2)
    assert embeddings.shape == (5, 2) and embeddings.dtype == np.float32
    assert embeddings[:, 0].tolist() == [1, 2, 3, 4, 1]
    assert [c[1]["inputs"][0].shape() for c in fake.calls[1:]] == [[2, 1], [2, 1], [1, 1]]
    assert client.embed([]).shape == (0, 0)
    assert client.embed("solo").shape == (1, 2)


def test_health_reports_each_model(sleeps: list[float]) -> None:
    fake = FakeTriton()
    fake.unknown_models.add("mllm")
    health = _sync(fake).health()
    assert health["live"] and health["server_ready"]
    assert health["version"] == "2.51.0"
    assert health["models"] == {
        "smoothguard": True,
        "noise": True,
        "generate": True,
        "aggregate": True,
        "embedder": True,
        "mllm": False,
    }
    assert health["ready"] is False


def test_closed_client_refuses_calls() -> None:
    client = SmoothGuardClient("127.0.0.1:1")
    with client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        client.health()


def test_url_scheme_is_accepted() -> None:
    with SmoothGuardClient("grpc://example:8001") as client:
        assert client.url == "example:8001"


def test_async_client_shares_inputs_retries_and_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(client_module.asyncio, "sleep", fake_sleep)

    async def scenario() -> None:
        fake = AsyncFakeTriton([_server_error("UNAVAILABLE")])
        async with AsyncSmoothGuardClient("127.0.0.1:1", backoff_s=0.25) as client:
            client._triton = fake  # type: ignore[assignment]
            answer = await client.ask(_png(), "q", policy="refuse", return_candidates=True)
            assert answer.cluster_sizes == (3, 1) and answer.original_outvoted
            sent = fake.calls[-1][1]["inputs"]
            assert [i.name() for i in sent] == [
                "IMAGE_BYTES",
                "PROMPT",
                "POLICY",
                "RETURN_CANDIDATES",
            ]
            assert await client.ask_undefended(PIXELS, "q") == "a dog"
            assert (await client.embed(["a", "bb", "ccc"], batch_size=2)).shape == (3, 2)
            health = await client.health()
            assert health["ready"] is True
            fake.failures = [_server_error("INVALID_ARGUMENT", "bad image")]
            with pytest.raises(SmoothGuardError, match="INVALID_ARGUMENT: bad image"):
                await client.ask(PIXELS, "q")
        assert delays == [0.25]

    asyncio.run(scenario())


# ---------------------------------------------------------------- certified mode


def test_certify_inputs_have_their_wire_names_types_and_shapes() -> None:
    inputs = build_ask_inputs(PIXELS, "q", certify=True, answer_set=("Yes", "no", "maybe"))
    assert _signature(inputs)["CERTIFY"] == ("BOOL", [1])
    assert _signature(inputs)["ANSWER_SET"] == ("BYTES", [3])
    values = _by_name(inputs)
    assert values["CERTIFY"].tolist() == [True]
    assert values["ANSWER_SET"].tolist() == [b"Yes", b"no", b"maybe"]  # the server lower-cases
    names = [i.name() for i in build_ask_inputs(PIXELS, "q", certify=True)]
    assert names == ["IMAGE", "PROMPT", "CERTIFY"]  # the server's yes/no
    assert "CERTIFY" not in [i.name() for i in build_ask_inputs(PIXELS, "q", certify=False)]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"answer_set": ["yes"]}, ValueError, "answer_set only applies with certify=True"),
        ({"certify": True, "answer_set": "yes,no"}, TypeError, "not one string"),
        ({"certify": True, "answer_set": ["yes", 1]}, TypeError, "answer_set"),
    ],
)
def test_bad_certify_options_fail_locally(
    options: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        build_ask_inputs(PIXELS, "q", **options)


def test_audio_requests_cannot_certify() -> None:
    from smoothguard_client.client import build_ask_audio_inputs

    with pytest.raises(ValueError, match="smoothguard_audio has none"):
        build_ask_audio_inputs(b"RIFF", "q", certify=True)


def certified_result(certified: bool, radius: float) -> Any:
    result = defended_result()
    response = result.get_response()
    for name, datatype, array in (
        ("CERTIFIED", "BOOL", np.array([certified])),
        ("CERTIFIED_RADIUS", "FP32", np.array([radius], np.float32)),
    ):
        tensor = response.outputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.extend(array.shape)
        response.raw_output_contents.append(array.tobytes())
    return grpcclient.InferResult(response)


def test_answer_decodes_the_certificate_and_older_servers_still_decode() -> None:
    answer = DefendedAnswer.from_infer_result(certified_result(True, 0.125), 0.1)
    assert answer.certified is True and answer.certified_radius == 0.125
    assert type(answer.certified) is bool and type(answer.certified_radius) is float
    assert answer.to_dict()["certified_radius"] == 0.125
    plain = DefendedAnswer.from_infer_result(certified_result(False, 0.0), 0.1)
    assert (plain.certified, plain.certified_radius) == (False, 0.0)
    older = DefendedAnswer.from_infer_result(defended_result(), 0.1)  # no such outputs
    assert (older.certified, older.certified_radius) == (False, 0.0)


def test_sync_and_async_ask_send_certify(sleeps: list[float]) -> None:
    fake = FakeTriton()
    client = _sync(fake)
    client.ask(PIXELS, "q", certify=True, answer_set=["cat", "dog"], seed=3)
    sent = _by_name(fake.calls[-1][1]["inputs"])
    assert sent["CERTIFY"].tolist() == [True] and sent["ANSWER_SET"].tolist() == [b"cat", b"dog"]

    async def scenario() -> dict[str, np.ndarray]:
        async_fake = AsyncFakeTriton()
        async with AsyncSmoothGuardClient("127.0.0.1:1") as aclient:
            aclient._triton = async_fake  # type: ignore[assignment]
            await aclient.ask(PIXELS, "q", certify=True)
        return _by_name(async_fake.calls[-1][1]["inputs"])

    sent = asyncio.run(scenario())
    assert sent["CERTIFY"].tolist() == [True] and "ANSWER_SET" not in sent
