"""The smoothguard ensemble, mllm and embedder over gRPC on a real tritonserver."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from smoothguard.synthetic.synthpope import generate_split

pytestmark = pytest.mark.integration

OUTPUTS = [
    "TEXT", "DECISION", "REASON", "CHOSEN_INDEX", "CLUSTER_SIZES", "AGREEMENT",
    "ORIGINAL_OUTVOTED", "TIE", "NUM_SAMPLES_USED", "ORIGINAL_TEXT", "CANDIDATES",
]  # fmt: skip


def tensor(name: str, value: Any, dtype: str) -> grpcclient.InferInput:
    array = np.asarray(value)
    if dtype == "BYTES":
        array = np.array(
            [v.encode() if isinstance(v, str) else v for v in array.reshape(-1)], dtype=np.object_
        ).reshape(array.shape)
    item = grpcclient.InferInput(name, list(array.shape), dtype)
    item.set_data_from_numpy(array)
    return item


def request(image: np.ndarray | bytes, prompt: str, **options: Any) -> list[grpcclient.InferInput]:
    """Inputs for smoothguard; options use the wire names in lower case."""
    if isinstance(image, bytes):
        inputs = [tensor("IMAGE_BYTES", np.array([image], dtype=np.object_), "BYTES")]
    else:
        inputs = [tensor("IMAGE", image, "UINT8" if image.dtype == np.uint8 else "FP32")]
    inputs.append(tensor("PROMPT", np.array([prompt], dtype=np.object_), "BYTES"))
    kinds = {
        "sigma": ("SIGMA", np.float32, "FP32"),
        "num_samples": ("NUM_SAMPLES", np.int32, "INT32"),
        "seed": ("SEED", np.int64, "INT64"),
        "max_new_tokens": ("MAX_NEW_TOKENS", np.int32, "INT32"),
        "policy": ("POLICY", np.object_, "BYTES"),
        "return_candidates": ("RETURN_CANDIDATES", np.bool_, "BOOL"),
    }
    for key, value in options.items():
        name, np_type, wire = kinds[key]
        inputs.append(tensor(name, np.array([value], dtype=np_type), wire))
    return inputs


def decoded(result: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in OUTPUTS:
        value = result.as_numpy(name)
        if value.dtype == np.object_:
            items = [v.decode() for v in value.reshape(-1)]
            out[name] = items if name == "CANDIDATES" else items[0]
        else:
            out[name] = value.tolist() if name == "CLUSTER_SIZES" else value.reshape(-1)[0].item()
    return out


@pytest.fixture(scope="module")
def client(triton: Any) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(triton.grpc_url)


@pytest.fixture(scope="module")
def scene() -> Any:
    return generate_split("test", 1)[0]


def ask(client: grpcclient.InferenceServerClient, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return decoded(client.infer("smoothguard", request(*args, **kwargs), client_timeout=120))


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_defended_answer_sees_the_image(client: Any, scene: Any) -> None:
    colour, shape = scene.objects[0]
    out = ask(client, scene.image, f"Is there a {colour} {shape} in the image?")
    assert out["TEXT"].strip().lower().startswith("yes")
    assert out["DECISION"] == "answered"
    majority, minority = out["CLUSTER_SIZES"]
    assert majority + minority == out["NUM_SAMPLES_USED"] == 10
    assert majority >= minority
    assert out["AGREEMENT"] == pytest.approx(majority / 10)
    assert 0 <= out["CHOSEN_INDEX"] < 10
    assert out["CANDIDATES"] == []


def test_png_bytes_and_raw_array_agree_under_a_seed(client: Any, scene: Any) -> None:
    raw = ask(client, scene.image, "Describe the image.", seed=7, return_candidates=True)
    encoded = ask(client, png_bytes(scene.image), "Describe the image.", seed=7,
                  return_candidates=True)  # fmt: skip
    assert raw["CANDIDATES"] == encoded["CANDIDATES"]


def test_returns_all_candidates_with_the_original_first(client: Any, scene: Any) -> None:
    out = ask(client, scene.image, "Describe the image.", num_samples=6, return_candidates=True)
    assert len(out["CANDIDATES"]) == 6 == out["NUM_SAMPLES_USED"]
    assert out["CANDIDATES"][0] == out["ORIGINAL_TEXT"]
    assert out["TEXT"] == out["CANDIDATES"][out["CHOSEN_INDEX"]]


def test_seeded_requests_reproduce_exactly(client: Any, scene: Any) -> None:
    first = ask(client, scene.image, "Describe the image.", seed=1234, sigma=0.4,
                return_candidates=True)  # fmt: skip
    second = ask(client, scene.image, "Describe the image.", seed=1234, sigma=0.4,
                 return_candidates=True)  # fmt: skip
    assert first == second


def noise_output(client: Any, image: np.ndarray, **options: Any) -> np.ndarray:
    result = client.infer("noise", request(image, "Describe the image.", **options))
    return result.as_numpy("PIXEL_VALUES")


def test_noise_is_seeded_or_unpredictable(client: Any, scene: Any) -> None:
    seeded = [noise_output(client, scene.image, seed=99, num_samples=4) for _ in range(2)]
    np.testing.assert_array_equal(seeded[0], seeded[1])
    unseeded = [noise_output(client, scene.image, num_samples=4) for _ in range(2)]
    assert unseeded[0].shape == (4, 3, *unseeded[0].shape[2:])
    np.testing.assert_array_equal(unseeded[0][0], unseeded[1][0])  # the clean copy
    assert not np.array_equal(unseeded[0][1:], unseeded[1][1:])  # fresh OS-entropy noise
    assert not np.array_equal(unseeded[0][1:], seeded[0][1:])


def test_policies(client: Any, scene: Any) -> None:
    monitored = ask(client, scene.image, "Describe the image.", policy="monitor", sigma=0.5)
    assert monitored["DECISION"] == "monitored"
    assert monitored["TEXT"] == monitored["ORIGINAL_TEXT"]
    single = ask(client, scene.image, "Describe the image.", num_samples=1, policy="refuse")
    assert single["CLUSTER_SIZES"] == [1, 0]
    assert single["AGREEMENT"] == 1.0
    assert single["DECISION"] == "answered"


def bad_requests(triton: Any, scene: Any) -> dict[str, list[grpcclient.InferInput]]:
    limits = triton.profile["defense"]
    image, prompt = scene.image, "Is there a red circle?"
    side = int(np.sqrt(limits["max_image_pixels"])) + 1
    return {
        "float image": request(image.astype(np.float32), prompt),
        "four channels": [
            tensor("IMAGE", np.zeros((8, 8, 4), np.uint8), "UINT8"),
            *request(image, prompt)[1:],
        ],
        "NaN sigma": request(image, prompt, sigma=float("nan")),
        "sigma too big": request(image, prompt, sigma=limits.get("sigma_max", 1.0) + 1),
        "negative sigma": request(image, prompt, sigma=-0.1),
        "zero samples": request(image, prompt, num_samples=0),
        "too many samples": request(image, prompt, num_samples=limits["num_samples_max"] + 1),
        "zero tokens": request(image, prompt, max_new_tokens=0),
        "too many tokens": request(
            image, prompt, max_new_tokens=limits["max_new_tokens_limit"] + 1
        ),
        "unknown policy": request(image, prompt, policy="yolo"),
        "negative seed": request(image, prompt, seed=-5),
        "empty prompt": request(image, "   "),
        "oversized prompt": request(image, "x" * (limits["max_prompt_chars"] + 1)),
        "oversized image": request(np.zeros((side, side, 3), np.uint8), prompt),
        "undecodable bytes": request(b"definitely not a png", prompt),
        "no image": request(image, prompt)[1:],
        "two images": [
            tensor("IMAGE_BYTES", np.array([png_bytes(image)], np.object_), "BYTES"),
            *request(image, prompt),
        ],
    }


def test_bad_inputs_are_rejected_while_good_requests_succeed(
    client: Any, triton: Any, scene: Any
) -> None:
    good: dict[str, Any] = {}

    def run_good() -> None:
        good["out"] = ask(client, scene.image, "Describe the image.", num_samples=10)

    worker = threading.Thread(target=run_good)
    worker.start()
    failures = {}
    for label, inputs in bad_requests(triton, scene).items():
        with pytest.raises(InferenceServerException) as info:
            client.infer("smoothguard", inputs, client_timeout=60)
        failures[label] = (info.value.status(), info.value.message())
    worker.join(120)
    wrong = {k: v for k, v in failures.items() if v[0] != "StatusCode.INVALID_ARGUMENT"}
    assert not wrong, wrong
    messages = {k: v[1] for k, v in failures.items()}
    assert "NaN" in messages["NaN sigma"] or "finite" in messages["NaN sigma"]
    assert "NUM_SAMPLES" in messages["too many samples"]
    assert "PROMPT is empty" in messages["empty prompt"]
    assert "over the limit" in messages["oversized image"]
    assert "IMAGE_BYTES" in messages["undecodable bytes"]
    assert good["out"]["TEXT"], "the concurrent good request must still be answered"
    assert client.is_server_live() and client.is_model_ready("smoothguard")


def test_unknown_model_is_not_found(client: Any) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("no_such_model", [tensor("X", np.zeros(1, np.float32), "FP32")])
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_mllm_directly(client: Any, scene: Any) -> None:
    colour, shape = scene.objects[0]
    prompt = f"Is there a {colour} {shape} in the image?"
    images = np.stack([scene.image, scene.image])
    inputs = [
        tensor("IMAGE", images, "UINT8"),
        tensor("PROMPT", np.array([[prompt], [prompt]], np.object_), "BYTES"),
    ]
    texts = client.infer("mllm", inputs).as_numpy("TEXT").reshape(-1)
    assert [t.decode().lower().startswith("yes") for t in texts] == [True, True]
    nan = noise_output(client, scene.image, num_samples=1).copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(InferenceServerException) as info:
        client.infer(
            "mllm", [tensor("PIXEL_VALUES", nan, "FP32"), tensor("PROMPT", [[prompt]], "BYTES")]
        )
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "NaN" in info.value.message()


def test_embedder_directly(client: Any) -> None:
    texts = np.array([["yes"], ["yes."], ["a red circle and a blue square"]], np.object_)
    vectors = client.infer("embedder", [tensor("TEXT", texts, "BYTES")]).as_numpy("EMBEDDING")
    assert vectors.shape[0] == 3 and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2]


def refusal(client: grpcclient.InferenceServerClient, model: str, inputs: list[Any]) -> str:
    """The INVALID_ARGUMENT message of a refused call (any other outcome fails the test)."""
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs, client_timeout=60)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    return info.value.message()


def test_degenerate_images_are_refused_not_guessed(client: Any) -> None:
    """1x1 and 1x4096 images were read with a guessed channel axis; now refused by size."""
    prompt = "Describe the image."
    for shape in [(1, 1, 3), (1, 4096, 3)]:
        message = refusal(client, "smoothguard", request(np.zeros(shape, np.uint8), prompt))
        assert "each side must be at least" in message, message
    thin = np.zeros((8, 4096, 3), np.uint8)
    assert "aspect ratio" in refusal(client, "smoothguard", request(thin, prompt))
    assert "aspect ratio" in refusal(client, "mllm", [
        tensor("IMAGE", thin[None], "UINT8"), tensor("PROMPT", [[prompt]], "BYTES"),
    ])  # fmt: skip


def test_undecodable_image_message_has_no_object_address(client: Any) -> None:
    message = refusal(client, "smoothguard", request(b"\x89PNG not really", "Describe it."))
    assert "IMAGE_BYTES" in message and "0x" not in message and "object at" not in message


def test_a_request_without_prompt_is_refused_by_name(client: Any, scene: Any) -> None:
    message = refusal(client, "smoothguard", request(scene.image, "x")[:1])
    assert "PROMPT" in message and "deadlock" not in message, message


def test_huge_pixel_values_are_refused_by_the_mllm(client: Any) -> None:
    """PIXEL_VALUES of 1e30 were answered with an empty string."""
    huge = np.full((1, 3, 64, 64), 1e30, np.float32)
    message = refusal(client, "mllm", [
        tensor("PIXEL_VALUES", huge, "FP32"), tensor("PROMPT", [["Describe it."]], "BYTES"),
    ])  # fmt: skip
    assert "PIXEL_VALUES" in message and "magnitude 1e+30" in message, message


def step_inputs(client: Any, scene: Any, n: int = 3) -> dict[str, Any]:
    """The noise step's real outputs, as the ensemble would hand them to generate."""
    noisy = client.infer("noise", request(scene.image, "Describe the image.", num_samples=n))
    return {
        "pixels": noisy.as_numpy("PIXEL_VALUES"),
        "options": noisy.as_numpy("OPTIONS").reshape(-1)[0].decode(),
    }


def generate_call(pixels: np.ndarray, options: str, prompt: str = "Describe it.") -> list[Any]:
    return [
        tensor("PIXEL_VALUES", pixels, "FP32"),
        tensor("PROMPT", np.array([prompt], np.object_), "BYTES"),
        tensor("OPTIONS", np.array([options.encode()], np.object_), "BYTES"),
    ]


def test_internal_steps_check_their_inputs_like_public_ones(client: Any, scene: Any) -> None:
    """generate, aggregate and the embedder are public: a direct caller gets INVALID_ARGUMENT
    naming the input and the problem, and no MLLM row is queued for a bad request."""
    step = step_inputs(client, scene)
    pixels, options = step["pixels"], step["options"]
    assert json.loads(options)["ticket"]  # the noise step marks its OPTIONS
    ok = client.infer("generate", generate_call(pixels, options), client_timeout=120)
    assert ok.as_numpy("CANDIDATES").shape == (3, 1)

    bad_json = refusal(client, "generate", generate_call(pixels, options[:-1]))
    assert bad_json.startswith("OPTIONS is not valid JSON"), bad_json
    unknown = json.loads(options) | {"debug": True}
    message = refusal(client, "generate", generate_call(pixels, json.dumps(unknown)))
    assert message == "OPTIONS has unknown key(s): 'debug'"
    many = json.loads(options) | {"num_samples": 5000}
    message = refusal(client, "generate", generate_call(np.repeat(pixels, 2, 0), json.dumps(many)))
    assert message == "OPTIONS key 'num_samples' must be an integer in [1, 64], got 5000"
    message = refusal(client, "generate", generate_call(np.repeat(pixels, 30, 0), options))
    assert message.startswith("PIXEL_VALUES has 90 rows but OPTIONS num_samples is 3"), message
    message = refusal(client, "generate", generate_call(pixels[:, :, :32, :32].copy(), options))
    assert "PIXEL_VALUES must have shape [N, 3, 64, 64]" in message, message
    message = refusal(client, "generate", generate_call(pixels * 1e30, options))
    assert "NaN or infinite" in message or "magnitude" in message, message

    candidates = np.array([[b"yes"], [b"yes"], [b"no"]], np.object_)
    vectors = np.eye(3, 8, dtype=np.float32)
    aggregate = [
        tensor("CANDIDATES", candidates, "BYTES"),
        tensor("EMBEDDINGS", vectors[:2], "FP32"),
        tensor("OPTIONS", np.array([options.encode()], np.object_), "BYTES"),
    ]
    message = refusal(client, "aggregate", aggregate)
    assert message == "EMBEDDINGS must have one row per candidate (3), got shape [2, 8]"
    aggregate[1] = tensor("EMBEDDINGS", np.full((3, 8), np.nan, np.float32), "FP32")
    assert refusal(client, "aggregate", aggregate) == "EMBEDDINGS contains NaN or infinite values"

    long_text = np.array([["x" * 5000]], np.object_)
    message = refusal(client, "embedder", [tensor("TEXT", long_text, "BYTES")])
    assert message == "TEXT row 0 has 5000 characters, over the limit of 4096"
    assert client.is_server_live() and client.is_model_ready("smoothguard")
