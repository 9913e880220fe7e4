"""Hostile input over the wire, to every model the server loads (raw tritonclient, gRPC).

Two kinds of examples, both for each model:

* raw: random shapes, dtypes, sizes, byte strings and values for every input the served config
  declares (so an input added later is fuzzed too); mostly refused by the first check.
* structured: requests Triton itself accepts (right names, dtypes and shapes, a valid PNG or
  WAV, a sane prompt, OPTIONS as the noise step writes them) carrying hostile values: NaN, inf,
  1e30, negative and extreme integers, huge sigma and sample counts, malformed or adversarial
  OPTIONS for the internal steps, candidates that disagree with their embeddings. These get
  past the dtype/shape checks, so the code behind them runs.

Each request must get an answer (every output the config declares, in its type and shape,
numbers finite) or a clean error (INVALID_ARGUMENT with a message), never INTERNAL/UNKNOWN (a
crash the server did not understand) and never a hang (client deadline); the server must stay
live and the model ready after every example.

"Reached model code" (reported per model, asserted for structured examples): the request was
answered, or refused by our validation of a value, i.e. anything but a refusal of the request's
structure, by Triton (input count, names, dtypes, shapes) or by our own presence checks
(STRUCTURAL below). Run with -s to see the counts and the commonest refusals per model.

Never sent, because they crash Triton itself before any model code runs (issue 17, handled by
the gateway in front of it): tensors whose element count times item size exceeds 2**40, and
HTTP bodies (everything here is gRPC).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import wave
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from smoothguard.core.audio import write_wav
from smoothguard.core.settings import DefenseSettings, RequestOptions
from smoothguard.synthetic.synthpope import generate_split

pytestmark = pytest.mark.integration

# Examples per model: raw ones, then structured ones (each its own test). With these defaults
# the file took 47-90 s on 2 shared cores, 30-60 s of it starting the server.
EXAMPLES = int(os.environ.get("SMOOTHGUARD_FUZZ_EXAMPLES", "30"))
STRUCTURED_EXAMPLES = int(os.environ.get("SMOOTHGUARD_FUZZ_STRUCTURED_EXAMPLES", "60"))
# Shares of structured examples that must reach model code, and be answered (measured: 100%
# reached, 32-80% answered, per model, at 60 examples).
MIN_REACHED = 0.3
MIN_ANSWERED = 0.1
CLIENT_TIMEOUT_S = 60.0
# What crashes Triton before model code runs: never built (see the module doc).
MAX_TENSOR_BYTES = 2**40
# A clean error: the request refused as the caller's mistake. Every refusal of every model was
# this when measured; INTERNAL/UNKNOWN would be a crash the server did not understand,
# DEADLINE_EXCEEDED a hang, UNAVAILABLE a dead stub or a server going away.
CLEAN = "StatusCode.INVALID_ARGUMENT"
# Refusals of a request's structure, not of its values: Triton's own (2.51 wording) and our
# presence checks. A refusal matching none of these came from our validation of a value.
STRUCTURAL = re.compile(
    r"unexpected shape for input|inputs but got|unexpected inference input|data-type|"
    r"byte size|batch size|is required but was not sent|send exactly one of|"
    r"must hold (one|exactly one)"
)
NUMERIC = {
    "BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16,
    "INT32": np.int32, "INT64": np.int64, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip
WIRE = {"TYPE_STRING": "BYTES", **{f"TYPE_{k}": k for k in NUMERIC}}
WIRE_OF = {np.dtype(v): k for k, v in NUMERIC.items()} | {np.dtype(np.object_): "BYTES"}
SCENE = generate_split("test", 1)[0]
RESOLUTION = (64, 64)  # the cpu profile's MLLM (models/synthvlm)
WINDOW = 16000  # the cpu profile's audio model: 1 s at 16 kHz (models/synthalm)
SETTINGS = DefenseSettings()


def _encoded(image: np.ndarray, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _wav(samples: np.ndarray, rate: int = 16000, width: int = 2, channels: int = 1) -> bytes:
    """PCM WAV of any width and channel count (write_wav makes 16-bit mono only)."""
    scale = float(2 ** (8 * width - 1) - 1)
    ints = np.round(np.clip(samples, -1, 1) * scale).astype(np.int64)
    ints = np.repeat(ints[:, None], channels, axis=1).reshape(-1)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(raw)
    return buffer.getvalue()


TONE = (np.sin(np.arange(WINDOW) / 5) * 0.3).astype(np.float32)
SEEDS = [_encoded(SCENE.image, "PNG"), _encoded(SCENE.image, "JPEG"), write_wav(TONE[:800])]
TEXTS = [b"Describe the image.", b"Is there a red circle in the image?", b"yes"]
BOMB = _encoded(np.zeros((3000, 3000), np.uint8), "PNG")  # 9 Mpx in ~9 kB


# -- raw examples -----------------------------------------------------------------------------


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
        limit = {"IMAGE": 72, "PIXEL_VALUES": 72, "AUDIO": 4000, "EMBEDDINGS": 16}.get(name, 4)
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
    return as_input(name, np.asarray(array), wire)  # 0-d comparisons give numpy scalars


def as_input(name: str, array: np.ndarray, wire: str | None = None) -> Any:
    """One tensor on the wire, never one of the sizes that crash Triton (module doc)."""
    itemsize = 8 if array.dtype == np.object_ else array.dtype.itemsize
    assert int(np.prod(array.shape, dtype=np.float64)) * itemsize <= MAX_TENSOR_BYTES
    item = grpcclient.InferInput(name, list(array.shape), wire or WIRE_OF[array.dtype])
    item.set_data_from_numpy(array)
    return item


def model_inputs(client: grpcclient.InferenceServerClient, model: str) -> Any:
    config = client.get_model_config(model).config
    specs = {i.name: (WIRE[model_config_pb2.DataType.Name(i.data_type)],
                      list(i.dims)) for i in config.input}  # fmt: skip
    return specs, config.max_batch_size > 0


@st.composite
def raw_request(draw: st.DrawFn, specs: dict[str, Any], batched: bool) -> list[Any]:
    chosen = draw(st.lists(st.sampled_from(sorted(specs)), unique=True, max_size=len(specs)))
    inputs = [draw(tensor_for(n, specs[n], batched)) for n in chosen]
    if draw(st.integers(0, 9)) == 0:
        inputs.append(draw(tensor_for("NOT_AN_INPUT", ("FP32", [1]), batched)))
    return inputs


# -- structured examples: valid structure, hostile values ------------------------------------


class Dice:
    """Which values of a request are hostile, decided by a seeded RNG rather than by hypothesis:
    hypothesis leans on first choices and boundaries, which would make almost every request
    hostile somewhere; a request has several values and one hostile value stops it, so each is
    hostile with a small probability and most requests get past every check."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def roll(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def choice(self, options: list[Any]) -> Any:
        return options[int(self.rng.integers(0, len(options)))]

    def pick(self, draw: st.DrawFn, valid: st.SearchStrategy[Any], hostile: list[Any]) -> Any:
        """A valid value (drawn by hypothesis) or, one time in HOSTILE_ODDS, a hostile one."""
        return self.choice(hostile) if self.roll(1 / HOSTILE_ODDS) else draw(valid)


HOSTILE_ODDS = 10
dice_rolls = st.integers(0, 2**32 - 1).map(Dice)
HOSTILE_FLOATS = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3.4e38, -0.1, 1e-45, 50.0, 2.0000001]
HOSTILE_INT32 = [0, -1, 65, 10_000, 2**31 - 1, -(2**31)]
HOSTILE_PROMPTS = [
    b"", b"   ", b"a\x00b", b"\xff\xfe", b"x" * 5000, "\u202eevil\u0301 \U0001f600".encode()
]  # fmt: skip
HOSTILE_POLICIES = [b"", b"ANSWER", b"answer\x00", b"\xff", b"y" * 2000]
VALID_PROMPTS = st.sampled_from(TEXTS[:2])
HOSTILE_TEXTS = [
    b"", b"\xff\xfe\xfd", b"a\x00b", "\u202e\U0001f600".encode() * 300, b"x" * 5000, b"x" * 20000
]  # fmt: skip


def scalar(name: str, value: Any, dtype: Any) -> Any:
    return as_input(name, np.array([value], dtype=dtype))


def prompt_column(draw: st.DrawFn, dice: Dice, rows: int | None = None) -> Any:
    """PROMPT as [1] (defended steps) or [rows, 1] (batched models)."""
    if rows is None:
        return as_input(
            "PROMPT", np.array([dice.pick(draw, VALID_PROMPTS, HOSTILE_PROMPTS)], np.object_)
        )
    values = [[dice.pick(draw, VALID_PROMPTS, HOSTILE_PROMPTS)] for _ in range(rows)]
    return as_input("PROMPT", np.array(values, np.object_))


def defended_options(draw: st.DrawFn, dice: Dice, sigma_max: float) -> list[Any]:
    """The optional inputs of smoothguard(_audio) and noise(_audio), each sent or not.
    NUM_SAMPLES and MAX_NEW_TOKENS are nearly always sent, small: the defaults are slow."""
    out = []
    if dice.roll(0.95):
        count = dice.pick(draw, st.integers(1, 3), HOSTILE_INT32)
        out.append(scalar("NUM_SAMPLES", count, np.int32))
    if dice.roll(0.5):
        out.append(
            scalar("SIGMA", dice.pick(draw, st.floats(0, sigma_max), HOSTILE_FLOATS), np.float32)
        )
    if dice.roll(0.95):
        tokens = dice.pick(draw, st.integers(1, 4), HOSTILE_INT32)
        out.append(scalar("MAX_NEW_TOKENS", tokens, np.int32))
    if dice.roll(0.5):
        seed = dice.pick(draw, st.sampled_from([0, 7, 2**63 - 1]), [-1, -(2**63)])
        out.append(scalar("SEED", seed, np.int64))
    if dice.roll(0.5):
        valid = st.sampled_from([b"answer", b"monitor", b"abstain", b"refuse"])
        out.append(scalar("POLICY", dice.pick(draw, valid, HOSTILE_POLICIES), np.object_))
    for name in ("RETURN_CANDIDATES", "ADAPTIVE"):
        if dice.roll(0.5):
            out.append(scalar(name, draw(st.booleans()), np.bool_))
    return out


def image_array(draw: st.DrawFn, dice: Dice) -> np.ndarray:
    sides = st.integers(16, 72)
    height, width = (dice.pick(draw, sides, [1, 2, 3, 600]) for _ in range(2))
    if draw(st.booleans()):
        return np.asarray(Image.fromarray(SCENE.image).resize((width, height)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_file(draw: st.DrawFn, dice: Dice) -> bytes:
    """A real PNG/JPEG, in forms a client may send: odd modes, sizes, and a decompression bomb."""
    kind = dice.choice(["png", "jpeg", "grey", "rgba", "palette", "cmyk", "16bit", "bomb"])
    image = image_array(draw, dice)
    if kind == "png":
        return _encoded(image, "PNG")
    if kind == "jpeg":
        return _encoded(image, "JPEG", quality=draw(st.integers(1, 95)))
    if kind == "grey":
        return _encoded(image[..., 0], "PNG")
    if kind == "rgba":
        return _encoded(np.dstack([image, image[..., :1]]), "PNG")
    if kind in ("palette", "cmyk"):
        buffer = io.BytesIO()
        converted = Image.fromarray(image).convert("P" if kind == "palette" else "CMYK")
        converted.save(buffer, format="PNG" if kind == "palette" else "JPEG")
        return buffer.getvalue()
    if kind == "16bit":
        return _encoded((image[..., 0].astype(np.uint16) * 257).astype(np.uint16), "PNG")
    return BOMB


@st.composite
def smoothguard_request(draw: st.DrawFn) -> list[Any]:
    """For smoothguard and noise (same inputs)."""
    dice = draw(dice_rolls)
    if dice.roll(0.5):
        image = as_input("IMAGE", image_array(draw, dice))
    else:
        image = as_input("IMAGE_BYTES", np.array([image_file(draw, dice)], np.object_))
    return [image, prompt_column(draw, dice), *defended_options(draw, dice, SETTINGS.sigma_max)]


def waveform(draw: st.DrawFn, dice: Dice, length: int | None = None) -> np.ndarray:
    lengths = st.sampled_from([WINDOW, 8000, 20000])
    n = length or dice.pick(draw, lengths, [1, 31 * 16000])
    amplitude = dice.pick(draw, st.sampled_from([0.0, 0.3, 1.0]), HOSTILE_FLOATS)
    with np.errstate(over="ignore", invalid="ignore"):
        return (np.resize(TONE / 0.3, n) * np.float32(amplitude)).astype(np.float32)


def wav_file(draw: st.DrawFn, dice: Dice) -> bytes:
    samples = np.resize(TONE, draw(st.sampled_from([800, WINDOW])))
    width = draw(st.sampled_from([1, 2, 3, 4]))
    rate = dice.pick(draw, st.just(16000), [8000, 44100, 1])
    data = _wav(samples, rate=rate, width=width, channels=draw(st.integers(1, 3)))
    if dice.roll(1 / HOSTILE_ODDS):  # a data chunk that claims far more than it holds
        data = data[:40] + (2**31).to_bytes(4, "little") + data[44:]
    return data


@st.composite
def audio_request(draw: st.DrawFn) -> list[Any]:
    """For smoothguard_audio and noise_audio (same inputs)."""
    dice = draw(dice_rolls)
    if dice.roll(0.5):
        audio = [as_input("AUDIO", waveform(draw, dice))]
        if dice.roll(0.5):
            rate = dice.pick(draw, st.just(16000), HOSTILE_INT32)
            audio.append(scalar("SAMPLE_RATE", rate, np.int32))
    else:
        audio = [as_input("AUDIO_BYTES", np.array([wav_file(draw, dice)], np.object_))]
    options = defended_options(draw, dice, SETTINGS.audio_sigma_max)
    return [*audio, prompt_column(draw, dice), *options]


def normalised_values(draw: st.DrawFn, dice: Dice, shape: tuple[int, ...]) -> np.ndarray:
    """Plausible normalised pixel values, sometimes with hostile ones mixed in."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = np.clip(rng.normal(0, 1, shape), -2, 2).astype(np.float32)
    if dice.roll(1 / HOSTILE_ODDS):
        flat = values.reshape(-1)
        flat[rng.integers(0, flat.size, draw(st.integers(1, 5)))] = dice.choice(HOSTILE_FLOATS)
    return values


@st.composite
def mllm_request(draw: st.DrawFn) -> list[Any]:
    dice = draw(dice_rolls)
    rows = draw(st.integers(1, 2))
    if dice.roll(0.5):
        first = image_array(draw, dice)  # all rows one size: the batch dimension needs it
        pixels = as_input("IMAGE", np.stack([first] * rows))
    else:
        size = dice.pick(draw, st.just(RESOLUTION), [(32, 32), (64, 65)])
        pixels = as_input("PIXEL_VALUES", normalised_values(draw, dice, (rows, 3, *size)))
    inputs = [pixels, prompt_column(draw, dice, rows)]
    if dice.roll(0.9):
        tokens = [dice.pick(draw, st.integers(1, 4), HOSTILE_INT32) for _ in range(rows)]
        inputs.append(as_input("MAX_NEW_TOKENS", np.array(tokens, np.int32).reshape(rows, 1)))
    return inputs


@st.composite
def mllm_audio_request(draw: st.DrawFn) -> list[Any]:
    dice = draw(dice_rolls)
    rows = draw(st.integers(1, 2))
    if dice.roll(0.5):
        inputs = [as_input("AUDIO", np.stack([waveform(draw, dice)] * rows))]
        if dice.roll(0.5):
            rate = dice.pick(draw, st.just(16000), HOSTILE_INT32)
            inputs.append(as_input("SAMPLE_RATE", np.full((rows, 1), rate, np.int32)))
    else:
        inputs = [as_input("AUDIO_BYTES", np.array([[wav_file(draw, dice)]] * rows, np.object_))]
    tokens = dice.pick(draw, st.integers(1, 4), HOSTILE_INT32)
    inputs += [
        prompt_column(draw, dice, rows),
        as_input("MAX_NEW_TOKENS", np.full((rows, 1), tokens, np.int32)),
    ]
    return inputs


@st.composite
def embedder_request(draw: st.DrawFn) -> list[Any]:
    dice = draw(dice_rolls)
    rows = draw(st.integers(1, 8))
    texts = [dice.pick(draw, st.sampled_from(TEXTS), HOSTILE_TEXTS) for _ in range(rows)]
    return [as_input("TEXT", np.array([[t] for t in texts], np.object_))]


OPTION_ATTACKS = [
    "unknown-key", "missing-key", "type", "huge-int", "float-int", "nan", "dup", "nested",
    "not-json", "array", "utf8", "long", "mismatch", "negative",
]  # fmt: skip


def options_json(draw: st.DrawFn, dice: Dice, num_samples: int, sigma_max: float) -> bytes:
    """OPTIONS as the noise step writes them (with a ticket or not: it only decides whether the
    request is counted), or, one time in four, an adversarial variant."""
    # Built directly, not through resolve_options: a count past num_samples_max is a hostile
    # value here, which the step must refuse.
    options = RequestOptions(
        sigma=draw(st.floats(0, sigma_max)),
        num_samples=num_samples,
        seed=draw(st.sampled_from([None, 3])),
        max_new_tokens=draw(st.integers(1, 4)),
        policy=draw(st.sampled_from(["answer", "monitor", "abstain", "refuse"])),
        return_candidates=draw(st.booleans()),
        adaptive=draw(st.booleans()),
    )
    data = json.loads(options.to_json())
    if dice.roll(0.5):
        data["ticket"] = dice.choice(["0" * 64, "forged", 12])
    if not dice.roll(0.25):
        return json.dumps(data).encode()
    key = dice.choice(sorted(data))
    attack = dice.choice(OPTION_ATTACKS)
    text = json.dumps(data)
    if attack == "unknown-key":
        return json.dumps(data | {"__proto__": {"admin": True}}).encode()
    if attack == "missing-key":
        return json.dumps({k: v for k, v in data.items() if k != key}).encode()
    if attack == "type":
        return json.dumps(data | {key: dice.choice(["1", [1], {}, None, True])}).encode()
    if attack == "huge-int":
        return json.dumps(data | {key: 10**400}).encode()
    if attack == "float-int":
        return text.replace(f'"{key}": {json.dumps(data[key])}', f'"{key}": 1e400').encode()
    if attack == "nan":
        return text.replace(f'"{key}": {json.dumps(data[key])}', f'"{key}": NaN').encode()
    if attack == "dup":
        return (text[:-1] + f', "{key}": {json.dumps(data[key])}}}').encode()
    if attack == "nested":
        return ("[" * 1500 + "]" * 1500).encode()
    if attack == "not-json":
        return text[: int(dice.rng.integers(0, len(text)))].encode()
    if attack == "array":
        return json.dumps([data]).encode()
    if attack == "utf8":
        return text.encode()[:-1] + b"\xff}"
    if attack == "long":
        return json.dumps(data | {"pad": "x" * 5000}).encode()
    if attack == "mismatch":
        return json.dumps(
            data | {"num_samples": num_samples + int(dice.rng.integers(1, 70))}
        ).encode()
    return json.dumps(data | {"seed": -1, "max_new_tokens": -(2**63)}).encode()


def generate_request(audio: bool) -> st.SearchStrategy[list[Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> list[Any]:
        dice = draw(dice_rolls)
        rows = dice.pick(draw, st.integers(1, 3), [65, 200])
        if audio:
            length = dice.pick(draw, st.just(WINDOW), [8000, 1])
            samples = as_input("AUDIO", np.stack([waveform(draw, dice, length)] * rows))
            sigma_max = SETTINGS.audio_sigma_max
        else:
            size = dice.pick(draw, st.just(RESOLUTION), [(32, 32), (1, 4096)])
            samples = as_input("PIXEL_VALUES", normalised_values(draw, dice, (rows, 3, *size)))
            sigma_max = SETTINGS.sigma_max
        claimed = int(dice.rng.integers(1, 65)) if dice.roll(1 / HOSTILE_ODDS) else rows
        options = options_json(draw, dice, claimed, sigma_max)
        return [
            samples,
            prompt_column(draw, dice),
            as_input("OPTIONS", np.array([options], np.object_)),
        ]

    return build()


@st.composite
def aggregate_request(draw: st.DrawFn) -> list[Any]:
    dice = draw(dice_rolls)
    rows = draw(st.integers(1, 6))
    answers = st.sampled_from([b"yes", b"no", b" "])
    texts = [dice.pick(draw, answers, HOSTILE_TEXTS) for _ in range(rows)]
    embedded = int(dice.rng.integers(1, 9)) if dice.roll(1 / HOSTILE_ODDS) else rows
    dims = dice.pick(draw, st.sampled_from([8, 384]), [1, 20_000])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = dice.pick(draw, st.just("unit"), ["zeros", "same", "tiny", "hostile"])
    vectors = rng.normal(size=(embedded, dims)).astype(np.float32)
    if kind == "unit":
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    elif kind == "zeros":
        vectors[:] = 0
    elif kind == "same":
        vectors[:] = vectors[0]
    elif kind == "tiny":
        vectors *= np.float32(1e-30)
    else:
        vectors.reshape(-1)[rng.integers(0, vectors.size)] = dice.choice(HOSTILE_FLOATS)
    # OPTIONS' num_samples: at least the candidates (fewer answers come back when adaptive
    # sampling stops early), sometimes fewer (refused).
    fewer = dice.roll(1 / HOSTILE_ODDS) and rows > 1
    claimed = rows - 1 if fewer else rows + draw(st.integers(0, 3))
    options = options_json(draw, dice, claimed, SETTINGS.audio_sigma_max)
    return [
        as_input("CANDIDATES", np.array([[t] for t in texts], np.object_)),
        as_input("EMBEDDINGS", vectors),
        as_input("OPTIONS", np.array([options], np.object_)),
    ]


STRUCTURED: dict[str, Callable[[], st.SearchStrategy[list[Any]]]] = {
    "smoothguard": smoothguard_request,
    "noise": smoothguard_request,
    "generate": lambda: generate_request(audio=False),
    "mllm": mllm_request,
    "embedder": embedder_request,
    "aggregate": aggregate_request,
    "smoothguard_audio": audio_request,
    "noise_audio": audio_request,
    "generate_audio": lambda: generate_request(audio=True),
    "mllm_audio": mllm_audio_request,
}
MODELS = sorted(STRUCTURED)


# -- the tests --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(triton: Any) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(triton.grpc_url)


def test_every_served_model_is_fuzzed(client: grpcclient.InferenceServerClient) -> None:
    """A model added to the repository must get a structured strategy here."""
    served = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
    assert served == set(STRUCTURED), served ^ set(STRUCTURED)


# Refusal messages seen, by model, with numbers blanked: printed to show what stopped requests.
MESSAGES: dict[str, Counter[str]] = {}
CONFIGS: dict[str, Any] = {}


def check_answer(
    client: grpcclient.InferenceServerClient, model: str, inputs: list[Any], result: Any
) -> None:
    """An answer is what the model declares: every output, in its declared type and shape
    (one row per request row for a batched model), numbers finite. A model that "answers"
    garbage does not count as answered."""
    if model not in CONFIGS:
        CONFIGS[model] = client.get_model_config(model).config
    config = CONFIGS[model]
    rows: list[int] | None = []  # what precedes the declared dims: a batched model's rows
    if config.max_batch_size > 0:
        rows = [inputs[0].shape()[0]] if inputs else None  # None: nothing sent, rows unknown
    for declared in config.output:
        array = result.as_numpy(declared.name)
        assert array is not None, f"{model} answered without {declared.name}"
        wire = WIRE[model_config_pb2.DataType.Name(declared.data_type)]
        assert WIRE_OF.get(array.dtype) == wire, (model, declared.name, array.dtype, wire)
        if rows is not None:
            expected = [*rows, *declared.dims]
            assert len(array.shape) == len(expected) and all(
                want in (-1, got) for want, got in zip(expected, array.shape, strict=True)
            ), (model, declared.name, array.shape, expected)
        if array.dtype.kind == "f":
            assert np.isfinite(array).all(), (model, declared.name, array)


def outcome(client: grpcclient.InferenceServerClient, model: str, inputs: list[Any]) -> str:
    """answered / refused (a value) / structural (refused by shape, type or presence)."""
    try:
        answer = client.infer(model, inputs, client_timeout=CLIENT_TIMEOUT_S)
        check_answer(client, model, inputs, answer)
        result = "answered"
    except InferenceServerException as exc:
        assert exc.status() == CLEAN, (exc.status(), exc.message())
        assert exc.message(), "an error must say what was wrong"
        assert not re.search(r"object at 0x|\b0x[0-9a-f]{8,}", exc.message()), exc.message()
        structural = STRUCTURAL.search(exc.message())
        result = "structural" if structural else "refused"
        gist = re.sub(r"-?\d[\d.]*(e[-+]?\d+)?", "#", exc.message().split("] ")[-1])[:80]
        MESSAGES.setdefault(model, Counter())[gist] += 1
    assert client.is_server_live() and client.is_model_ready(model)
    return result


def fuzz(strategy: st.SearchStrategy[list[Any]], examples: int, run: Callable[[Any], None]) -> None:
    @settings(
        max_examples=examples,
        deadline=None,  # the client deadline is the hang detector
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(inputs=strategy)
    def check(inputs: list[Any]) -> None:
        run(inputs)

    check()


@pytest.mark.parametrize("model", MODELS)
def test_random_input_gets_an_answer_or_a_clean_error(
    client: grpcclient.InferenceServerClient, model: str
) -> None:
    specs, batched = model_inputs(client, model)
    tally: Counter[str] = Counter()
    started = time.monotonic()
    fuzz(raw_request(specs, batched), EXAMPLES, lambda i: tally.update([outcome(client, model, i)]))
    reached = tally["answered"] + tally["refused"]
    MESSAGES.pop(model, None)
    print(f"\nfuzz raw {model}: {dict(tally)}, reached model code {reached}/{tally.total()}, "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    # Every example got an answer (checked as well-formed) or a clean refusal, and random input
    # is mostly refused: some of it must have been.
    assert tally.total() == EXAMPLES and set(tally) <= {"answered", "refused", "structural"}
    assert tally["refused"] + tally["structural"] > 0, tally


@pytest.mark.parametrize("model", MODELS)
def test_hostile_values_reach_model_code_and_get_clean_answers(
    client: grpcclient.InferenceServerClient, model: str
) -> None:
    tally: Counter[str] = Counter()
    started = time.monotonic()
    fuzz(
        STRUCTURED[model](),
        STRUCTURED_EXAMPLES,
        lambda i: tally.update([outcome(client, model, i)]),
    )
    total = tally.total()
    reached = tally["answered"] + tally["refused"]
    print(f"\nfuzz structured {model}: {dict(tally)}, reached model code {reached}/{total}, "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    for gist, count in MESSAGES.pop(model, Counter()).most_common(6):
        print(f"    {count:3d} x {gist}")
    assert reached >= MIN_REACHED * total, tally
    # and a share got past every check, so the code behind validation runs too
    assert tally["answered"] >= MIN_ANSWERED * total, tally
