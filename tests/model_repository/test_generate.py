"""The generate step's fan-out: N BLS calls, order kept, failure modes honoured."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from smoothguard.core.settings import DefenseSettings, resolve_options

REPO_ROOT = Path(__file__).resolve().parents[2]
# What the generate config passes besides the defense settings: the MLLM to call, and its
# checkpoint, read for the input resolution (64 x 64 for the shipped model).
PARAMS = {"mllm_model": "mllm", "mllm_path": str(REPO_ROOT / "models" / "synthvlm")}
SIZE = (3, 64, 64)


def make_request(pb: ModuleType, n: int) -> Any:
    pixels = np.stack([np.full(SIZE, i, np.float32) for i in range(n)])
    options = resolve_options(DefenseSettings(), num_samples=n, max_new_tokens=7)
    return pb.Request(
        PIXEL_VALUES=pixels,
        PROMPT=np.array([b"what?"], np.object_),
        OPTIONS=np.array([options.to_json().encode()], np.object_),
    )


def run(module: ModuleType, pb: ModuleType, failure_mode: str, fail: set[int], n: int = 5) -> Any:
    seen: list[int] = []

    async def handler(call: Any) -> Any:
        inputs = {t.name(): t.as_numpy() for t in call.inputs}
        assert call.model_name == "mllm"
        assert inputs["PIXEL_VALUES"].shape == (1, *SIZE)
        assert inputs["MAX_NEW_TOKENS"].tolist() == [[7]]
        index = int(inputs["PIXEL_VALUES"][0, 0, 0, 0])
        seen.append(index)
        await asyncio.sleep(0.001 * (n - index))  # finish out of order
        if index in fail:
            return pb.InferenceResponse(
                error=pb.TritonError(f"boom {index}", pb.TritonError.UNAVAILABLE)
            )
        return pb.InferenceResponse(
            [pb.Tensor("TEXT", np.array([[f"answer {index}".encode()]], np.object_))]
        )

    pb.bls_handler = handler
    model = module.TritonPythonModel()
    params = DefenseSettings(failure_mode=failure_mode).to_parameters() | PARAMS
    model.initialize(pb.model_args(params))
    (response,) = asyncio.run(model.execute([make_request(pb, n)]))
    assert sorted(seen) == list(range(n))
    return response


def test_all_answers_in_order(load_model: Any, pb_utils: ModuleType) -> None:
    response = run(load_model("generate"), pb_utils, "closed", set())
    texts = [t.decode() for t in response.output("CANDIDATES").reshape(-1)]
    assert texts == [f"answer {i}" for i in range(5)]
    assert response.output("CANDIDATES").shape == (5, 1)


def test_fail_closed_fails_the_request(load_model: Any, pb_utils: ModuleType) -> None:
    response = run(load_model("generate"), pb_utils, "closed", {3})
    assert response.has_error()
    assert "1 of 5" in response.error().message() and "boom 3" in response.error().message()
    assert response.error().code() == pb_utils.TritonError.UNAVAILABLE


def test_fail_open_votes_with_the_rest(load_model: Any, pb_utils: ModuleType) -> None:
    response = run(load_model("generate"), pb_utils, "open", {2, 4})
    texts = [t.decode() for t in response.output("CANDIDATES").reshape(-1)]
    assert texts == ["answer 0", "answer 1", "answer 3"]


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_losing_the_clean_sample_always_fails(
    load_model: Any, pb_utils: ModuleType, mode: str
) -> None:
    response = run(load_model("generate"), pb_utils, mode, {0})
    assert response.has_error() and "unperturbed" in response.error().message()


def run_adaptive(module: ModuleType, pb: ModuleType, answers: list[str]) -> tuple[Any, list[int]]:
    calls: list[int] = []

    async def handler(call: Any) -> Any:
        index = int({t.name(): t.as_numpy() for t in call.inputs}["PIXEL_VALUES"][0, 0, 0, 0])
        calls.append(index)
        return pb.InferenceResponse(
            [pb.Tensor("TEXT", np.array([[answers[index].encode()]], np.object_))]
        )

    pb.bls_handler = handler
    model = module.TritonPythonModel()
    params = DefenseSettings(adaptive_initial=3).to_parameters() | PARAMS
    model.initialize(pb.model_args(params))
    pixels = np.stack([np.full(SIZE, i, np.float32) for i in range(len(answers))])
    options = resolve_options(DefenseSettings(), num_samples=len(answers), adaptive=True)
    request = pb.Request(
        PIXEL_VALUES=pixels,
        PROMPT=np.array([b"q"], np.object_),
        OPTIONS=np.array([options.to_json().encode()], np.object_),
    )
    (response,) = asyncio.run(model.execute([request]))
    return response, calls


def test_adaptive_stops_after_an_agreeing_first_round(
    load_model: Any, pb_utils: ModuleType
) -> None:
    response, calls = run_adaptive(load_model("generate"), pb_utils, ["yes"] * 8)
    assert sorted(calls) == [0, 1, 2]
    assert response.output("CANDIDATES").shape == (3, 1)


def test_adaptive_goes_to_full_n_on_disagreement(load_model: Any, pb_utils: ModuleType) -> None:
    answers = ["no", "yes", "no", "yes", "yes", "yes", "yes", "yes"]
    response, calls = run_adaptive(load_model("generate"), pb_utils, answers)
    assert sorted(calls) == list(range(8))
    assert [t.decode() for t in response.output("CANDIDATES").reshape(-1)] == answers


def batch_fanout_model(load_model: Any, pb_utils: ModuleType, rows_per_call: int) -> Any:
    model = load_model("generate").TritonPythonModel()
    params = (
        DefenseSettings().to_parameters()
        | PARAMS
        | {
            "fanout": "batch",
            "mllm_max_batch_size": str(rows_per_call),
        }
    )
    model.initialize(pb_utils.model_args(params))
    return model


def test_batch_fanout_sends_rows_in_chunks(load_model: Any, pb_utils: ModuleType) -> None:
    calls: list[list[int]] = []

    async def handler(call: Any) -> Any:
        inputs = {t.name(): t.as_numpy() for t in call.inputs}
        rows = [int(v) for v in inputs["PIXEL_VALUES"][:, 0, 0, 0]]
        assert inputs["PROMPT"].shape == (len(rows), 1)
        assert inputs["MAX_NEW_TOKENS"].tolist() == [[7]] * len(rows)
        calls.append(rows)
        texts = np.array([[f"answer {i}".encode()] for i in rows], np.object_)
        return pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", texts)])

    pb_utils.bls_handler = handler
    model = batch_fanout_model(load_model, pb_utils, rows_per_call=2)
    (response,) = asyncio.run(model.execute([make_request(pb_utils, 5)]))
    assert sorted(calls) == [[0, 1], [2, 3], [4]]
    texts = [t.decode() for t in response.output("CANDIDATES").reshape(-1)]
    assert texts == [f"answer {i}" for i in range(5)]


def test_unknown_fanout_is_a_config_error(load_model: Any, pb_utils: ModuleType) -> None:
    model = load_model("generate").TritonPythonModel()
    params = DefenseSettings().to_parameters() | PARAMS | {"fanout": "spray"}
    with pytest.raises(ValueError, match="fanout"):
        model.initialize(pb_utils.model_args(params))


def test_all_copies_are_handed_on_without_a_copy(load_model: Any, pb_utils: ModuleType) -> None:
    """One group holding every copy sends the step's own input tensor (the Python backend then
    passes its shared memory on); a part of the copies is a new tensor."""
    sent: list[Any] = []

    async def handler(call: Any) -> Any:
        tensor = next(t for t in call.inputs if t.name() == "PIXEL_VALUES")
        sent.append(tensor)
        texts = np.array([[b"yes"]] * tensor.as_numpy().shape[0], np.object_)
        return pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", texts)])

    pb_utils.bls_handler = handler
    model = batch_fanout_model(load_model, pb_utils, rows_per_call=8)
    whole = make_request(pb_utils, 5)
    (response,) = asyncio.run(model.execute([whole]))
    assert not response.has_error()
    assert sent == [pb_utils.get_input_tensor_by_name(whole, "PIXEL_VALUES")]

    sent.clear()
    parts = make_request(pb_utils, 10)  # 8 + 2 rows
    (response,) = asyncio.run(model.execute([parts]))
    assert not response.has_error()
    own = pb_utils.get_input_tensor_by_name(parts, "PIXEL_VALUES")
    assert all(t is not own for t in sent)
    assert sorted(t.as_numpy()[:, 0, 0, 0].tolist() for t in sent) == [
        list(range(8)),
        [8, 9],
    ]


def refused_before_any_call(load_model: Any, pb: ModuleType, request: Any) -> str:
    """generate's INVALID_ARGUMENT message for a direct call; no MLLM call may be made."""
    calls: list[Any] = []

    async def handler(call: Any) -> Any:
        calls.append(call)
        raise AssertionError("a refused request must not reach the MLLM")

    pb.bls_handler = handler
    model = load_model("generate").TritonPythonModel()
    model.initialize(pb.model_args(DefenseSettings().to_parameters() | PARAMS))
    (response,) = asyncio.run(model.execute([request]))
    assert not calls
    assert response.has_error()
    assert response.error().code() == pb.TritonError.INVALID_ARG, response.error().message()
    return response.error().message()


def direct(pb: ModuleType, pixels: np.ndarray, options: str, prompt: bytes | None = b"q") -> Any:
    inputs = {"PIXEL_VALUES": pixels, "OPTIONS": np.array([options.encode()], np.object_)}
    if prompt is not None:
        inputs["PROMPT"] = np.array([prompt], np.object_)
    return pb.Request(**inputs)


def options_for(n: int) -> str:
    return resolve_options(DefenseSettings(), num_samples=n).to_json()


def test_rows_must_match_the_options_and_their_limit(load_model: Any, pb_utils: ModuleType) -> None:
    """One direct call cannot queue thousands of MLLM rows: the rows are the OPTIONS' num_samples,
    which is bounded by num_samples_max (64)."""
    many = np.zeros((1000, *SIZE), np.float32)
    message = refused_before_any_call(load_model, pb_utils, direct(pb_utils, many, options_for(10)))
    assert message.startswith("PIXEL_VALUES has 1000 rows but OPTIONS num_samples is 10")
    forged = options_for(10).replace('"num_samples": 10', '"num_samples": 1000')
    message = refused_before_any_call(load_model, pb_utils, direct(pb_utils, many, forged))
    assert message == "OPTIONS key 'num_samples' must be an integer in [1, 64], got 1000"


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (np.zeros((2, 3, 32, 32), np.float32), "shape [N, 3, 64, 64], got [2, 3, 32, 32]"),
        (np.full((2, *SIZE), np.nan, np.float32), "NaN or infinite"),
        (np.full((2, *SIZE), 1e30, np.float32), "magnitude 1e+30, over the limit of 12.1"),
        (np.full((2, *SIZE), -50.0, np.float32), "magnitude 50"),
    ],
    ids=["resolution", "nan", "huge", "far-outside"],
)
def test_pixel_values_must_be_what_the_mllm_takes(
    load_model: Any, pb_utils: ModuleType, pixels: np.ndarray, expected: str
) -> None:
    request = direct(pb_utils, pixels, options_for(2))
    message = refused_before_any_call(load_model, pb_utils, request)
    assert message.startswith("PIXEL_VALUES") and expected in message, message


@pytest.mark.parametrize(
    ("options", "prompt", "expected"),
    [
        ('{"sigma": 0.1', b"q", "OPTIONS is not valid JSON"),
        (options_for(2)[:-1] + ', "extra": 1}', b"q", "OPTIONS has unknown key(s): 'extra'"),
        (options_for(2).replace('"seed": null', '"seed": -1'), b"q", "OPTIONS key 'seed'"),
        (options_for(2).replace('"max_new_tokens": 32', '"max_new_tokens": 1e9'), b"q",
         "OPTIONS key 'max_new_tokens' must be an integer"),
        (options_for(2).replace('"adaptive": false', '"adaptive": 0'), b"q",
         "OPTIONS key 'adaptive' must be a boolean"),
        (options_for(2), None, "input PROMPT is required"),
        (options_for(2), b"   ", "PROMPT is empty"),
        (options_for(2), b"\xff", "PROMPT is not valid UTF-8"),
    ],
    ids=["json", "unknown", "seed", "tokens", "bool", "no-prompt", "empty-prompt", "utf8"],
)  # fmt: skip
def test_options_and_prompt_are_checked_as_a_strangers(
    load_model: Any, pb_utils: ModuleType, options: str, prompt: bytes | None, expected: str
) -> None:
    request = direct(pb_utils, np.zeros((2, *SIZE), np.float32), options, prompt)
    message = refused_before_any_call(load_model, pb_utils, request)
    assert expected in message, message


def test_certify_rows_go_past_num_samples_max_and_fail_closed(
    load_model: Any, pb_utils: ModuleType
) -> None:
    """A certify request's 111 rows are accepted (certify_draws, not num_samples_max), every
    one asked; with failure_mode open on the server, one failed draw still fails it."""
    failing: set[int] = set()

    async def handler(call: Any) -> Any:
        pixels = {t.name(): t.as_numpy() for t in call.inputs}["PIXEL_VALUES"]
        rows = [round(float(v) * 10) for v in pixels[:, 0, 0, 0]]  # copy i holds i / 10
        if failing & set(rows):
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError("boom", pb_utils.TritonError.INTERNAL)
            )
        texts = np.array([[b"yes"] for _ in rows], np.object_)
        return pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", texts)])

    pb_utils.bls_handler = handler
    model = load_model("generate").TritonPythonModel()
    params = DefenseSettings(failure_mode="open").to_parameters() | PARAMS
    params |= {"fanout": "batch", "mllm_max_batch_size": "32"}
    model.initialize(pb_utils.model_args(params))
    certify = resolve_options(DefenseSettings(), certify=True).to_json()
    pixels = np.stack([np.full(SIZE, i / 10, np.float32) for i in range(111)])
    (response,) = asyncio.run(model.execute([direct(pb_utils, pixels, certify)]))
    assert not response.has_error(), response.error().message()
    assert response.output("CANDIDATES").shape == (111, 1)
    failing.add(40)
    (response,) = asyncio.run(model.execute([direct(pb_utils, pixels, certify)]))
    assert response.has_error() and "failure_mode=closed" in response.error().message()


def test_audio_generate_refuses_certify_options(load_model: Any, pb_utils: ModuleType) -> None:
    model = load_model("audio/generate_audio").TritonPythonModel()
    params = DefenseSettings().to_parameters() | {
        "mllm_model": "mllm_audio",
        "samples_input": "AUDIO",
        "audio_mllm_path": str(REPO_ROOT / "models" / "synthalm"),
    }
    model.initialize(pb_utils.model_args(params))
    audio = resolve_options(DefenseSettings().for_audio(), certify=True).to_json()
    request = pb_utils.Request(
        AUDIO=np.zeros((111, 16000), np.float32),
        PROMPT=np.array([b"q"], np.object_),
        OPTIONS=np.array([audio.encode()], np.object_),
    )
    (response,) = asyncio.run(model.execute([request]))
    assert response.has_error()
    assert response.error().code() == pb_utils.TritonError.INVALID_ARG
    assert "smoothguard_audio has no certify" in response.error().message()
