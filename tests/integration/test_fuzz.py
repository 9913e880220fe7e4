"""Hostile input over the wire: hypothesis sends random shapes, dtypes, sizes, byte strings
and values to every input of `smoothguard`, `mllm`, `embedder`, and the audio endpoint
`smoothguard_audio` and its `mllm_audio` (raw tritonclient, gRPC).

Each request must get an answer or a clean error (INVALID_ARGUMENT and the like), never
INTERNAL/UNKNOWN (a crash the server did not understand) and never a hang (client deadline);
the server must stay live and the model ready after every example. The inputs are read from
the served model configs, so an input added later is fuzzed too.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from smoothguard.audio import write_wav
from smoothguard.synthpope import generate_split

pytestmark = pytest.mark.integration

MODELS = ("smoothguard", "mllm", "embedder", "smoothguard_audio", "mllm_audio")
EXAMPLES = int(os.environ.get("SMOOTHGUARD_FUZZ_EXAMPLES", "40"))
CLIENT_TIMEOUT_S = 60.0
# A crash or an unexplained failure; anything else is a deliberate refusal.
FORBIDDEN = {"StatusCode.INTERNAL", "StatusCode.UNKNOWN", "StatusCode.DEADLINE_EXCEEDED"}
NUMERIC = {
    "BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16,
    "INT32": np.int32, "INT64": np.int64, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip
WIRE = {"TYPE_STRING": "BYTES", **{f"TYPE_{k}": k for k in NUMERIC}}
SCENE = generate_split("test", 1)[0]


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(SCENE.image).save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = [_encoded("PNG"), _encoded("JPEG"), write_wav(np.sin(np.arange(800) / 5) * 0.3)]
TEXTS = [b"Describe the image.", b"Is there a red circle in the image?", b"yes"]


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, text, or a real PNG/JPEG/prompt with some bytes changed or cut."""
    kind = draw(st.sampled_from(["random", "text", "mutated"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", errors="surrogatepass")
    data = bytearray(draw(st.sampled_from(SEEDS + TEXTS)))
    for _ in range(draw(st.integers(0, 6))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut] if draw(st.booleans()) else data)


@st.composite
def tensor_for(draw: st.DrawFn, name: str, spec: tuple[str, list[int]], batched: bool) -> Any:
    """Mostly the declared type and a fitting shape (to reach model code), sometimes not."""
    wire, dims = spec
    if draw(st.integers(0, 4)) == 0:
        wire = draw(st.sampled_from(["BYTES", *NUMERIC]))
    if draw(st.integers(0, 4)) == 0:
        shape = draw(st.lists(st.integers(0, 5), max_size=4))
    else:
        shape = [draw(st.integers(1, 3))] if batched else []
        limit = {"IMAGE": 72, "PIXEL_VALUES": 72, "AUDIO": 4000}.get(name, 4)
        shape += [d if d >= 0 else draw(st.integers(0, limit)) for d in dims]
    size = int(np.prod(shape)) if shape else 1
    if wire == "BYTES":
        # A few drawn elements, repeated to fill big shapes (hypothesis caps list sizes).
        values = draw(st.lists(hostile_bytes(), min_size=min(size, 1), max_size=min(size, 8)))
        array = np.array((values * size)[:size] if values else [], dtype=np.object_)
        array = array.reshape(shape)
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        dtype = NUMERIC[wire]
        if np.issubdtype(dtype, np.floating):
            pool = np.array([0, 0.15, -1, 1e30, np.nan, np.inf, -np.inf], dtype=np.float64)
            mixed = np.where(rng.random(size) < 0.7, rng.normal(0, 1, size), rng.choice(pool, size))
            with np.errstate(over="ignore"):  # 1e30 -> inf in float32/16: hostile on purpose
                array = mixed.astype(dtype).reshape(shape)
        elif dtype is np.bool_:
            array = rng.random(size).reshape(shape) < 0.5
        else:
            info = np.iinfo(dtype)
            small = rng.integers(-2, 70, size)
            wide = rng.integers(info.min, info.max, size, dtype=dtype, endpoint=True)
            array = np.where(rng.random(size) < 0.6, small, wide)
            array = np.clip(array, info.min, info.max).astype(dtype).reshape(shape)
    array = np.asarray(array)  # 0-d comparisons give numpy scalars, not arrays
    item = grpcclient.InferInput(name, list(array.shape), wire)
    item.set_data_from_numpy(array)
    return item


def model_inputs(client: grpcclient.InferenceServerClient, model: str) -> Any:
    config = client.get_model_config(model).config
    specs = {i.name: (WIRE[model_config_pb2.DataType.Name(i.data_type)],
                      list(i.dims)) for i in config.input}  # fmt: skip
    return specs, config.max_batch_size > 0


@st.composite
def request_for(draw: st.DrawFn, specs: dict[str, Any], batched: bool) -> list[Any]:
    chosen = draw(st.lists(st.sampled_from(sorted(specs)), unique=True, max_size=len(specs)))
    inputs = [draw(tensor_for(n, specs[n], batched)) for n in chosen]
    if draw(st.integers(0, 9)) == 0:
        inputs.append(draw(tensor_for("NOT_AN_INPUT", ("FP32", [1]), batched)))
    return inputs


@pytest.fixture(scope="module")
def client(triton: Any) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(triton.grpc_url)


TRIED: dict[str, dict[str, int]] = {}


@pytest.mark.parametrize("model", MODELS)
def test_hostile_input_gets_an_answer_or_a_clean_error(
    client: grpcclient.InferenceServerClient, model: str
) -> None:
    specs, batched = model_inputs(client, model)
    tally = TRIED.setdefault(model, {"answered": 0, "refused": 0})

    @settings(
        max_examples=EXAMPLES,
        deadline=None,  # the client deadline below is the hang detector
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(inputs=request_for(specs, batched))
    def check(inputs: list[Any]) -> None:
        try:
            client.infer(model, inputs, client_timeout=CLIENT_TIMEOUT_S)
            tally["answered"] += 1
        except InferenceServerException as exc:
            assert exc.status() not in FORBIDDEN, (exc.status(), exc.message())
            assert exc.message(), "an error must say what was wrong"
            tally["refused"] += 1
        assert client.is_server_live() and client.is_model_ready(model)

    check()
    print(f"fuzz {model}: {tally}")
    assert tally["refused"] > 0
