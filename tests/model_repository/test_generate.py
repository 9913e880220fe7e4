"""The generate step's fan-out: N BLS calls, order kept, failure modes honoured."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from smoothguard.settings import DefenseSettings, resolve_options


def make_request(pb: ModuleType, n: int) -> Any:
    pixels = np.stack([np.full((3, 2, 2), i, np.float32) for i in range(n)])
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
        assert inputs["PIXEL_VALUES"].shape == (1, 3, 2, 2)
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
    params = DefenseSettings(failure_mode=failure_mode).to_parameters() | {"mllm_model": "mllm"}
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
    params = DefenseSettings(adaptive_initial=3).to_parameters() | {"mllm_model": "mllm"}
    model.initialize(pb.model_args(params))
    pixels = np.stack([np.full((3, 2, 2), i, np.float32) for i in range(len(answers))])
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
    params = DefenseSettings().to_parameters() | {
        "mllm_model": "mllm",
        "fanout": "batch",
        "mllm_max_batch_size": str(rows_per_call),
    }
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
    params = DefenseSettings().to_parameters() | {"mllm_model": "mllm", "fanout": "spray"}
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
