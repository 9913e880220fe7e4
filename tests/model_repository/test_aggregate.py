"""The aggregate step: evidence tensors and the policy, from candidates and embeddings."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from smoothguard.core.settings import DefenseSettings, resolve_options


def aggregate(load_model: Any, pb: ModuleType, texts: list[str], vectors: np.ndarray, **opts: Any):
    model = load_model("aggregate").TritonPythonModel()
    model.initialize(pb.model_args(DefenseSettings().to_parameters() | {"device": "cpu"}))
    options = resolve_options(DefenseSettings(), num_samples=len(texts), **opts)
    request = pb.Request(
        CANDIDATES=np.array([[t.encode()] for t in texts], np.object_),
        EMBEDDINGS=vectors.astype(np.float32),
        OPTIONS=np.array([options.to_json().encode()], np.object_),
    )
    (response,) = model.execute([request])
    return response


def unit(rows: list[list[float]]) -> np.ndarray:
    v = np.array(rows, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_majority_wins_and_outvoted_original_is_flagged(
    load_model: Any, pb_utils: ModuleType
) -> None:
    texts = ["attacked", "yes", "yes", "yes.", "yes"]
    vectors = unit([[0, 1], [1, 0], [1, 0.01], [1, 0.02], [1, 0]])
    response = aggregate(load_model, pb_utils, texts, vectors, return_candidates=True)
    out = {t.name(): t.as_numpy() for t in response.output_tensors()}
    assert out["TEXT"][0].decode().startswith("yes")
    assert out["CLUSTER_SIZES"].tolist() == [4, 1]
    assert out["ORIGINAL_OUTVOTED"].tolist() == [True]
    assert out["AGREEMENT"][0] == np.float32(0.8)
    assert out["ORIGINAL_TEXT"][0].decode() == "attacked"
    assert [c.decode() for c in out["CANDIDATES"]] == texts


def test_monitor_returns_the_original(load_model: Any, pb_utils: ModuleType) -> None:
    texts = ["attacked", "yes", "yes"]
    vectors = unit([[0, 1], [1, 0], [1, 0]])
    response = aggregate(load_model, pb_utils, texts, vectors, policy="monitor")
    out = {t.name(): t.as_numpy() for t in response.output_tensors()}
    assert out["TEXT"][0].decode() == "attacked"
    assert out["DECISION"][0].decode() == "monitored"
    assert out["ORIGINAL_OUTVOTED"].tolist() == [True]
    assert out["CANDIDATES"].shape == (0,)


def test_mismatched_embeddings_are_a_clean_error(load_model: Any, pb_utils: ModuleType) -> None:
    response = aggregate(load_model, pb_utils, ["a", "b"], unit([[1, 0], [0, 1]])[:1])
    assert response.has_error()
    assert response.error().code() == pb_utils.TritonError.INVALID_ARG


def refusal(load_model: Any, pb: ModuleType, **inputs: np.ndarray) -> str:
    """The INVALID_ARGUMENT message aggregate gives a direct call with these inputs."""
    model = load_model("aggregate").TritonPythonModel()
    model.initialize(pb.model_args(DefenseSettings().to_parameters() | {"device": "cpu"}))
    (response,) = model.execute([pb.Request(**inputs)])
    assert response.has_error()
    assert response.error().code() == pb.TritonError.INVALID_ARG, response.error().message()
    return response.error().message()


def column(*texts: str) -> np.ndarray:
    return np.array([[t.encode()] for t in texts], np.object_)


def options_tensor(text: str) -> np.ndarray:
    return np.array([text.encode()], np.object_)


GOOD_OPTIONS = resolve_options(DefenseSettings(), num_samples=3).to_json()


@pytest.mark.parametrize(
    ("vectors", "expected"),
    [
        (np.array([[1, 0], [np.nan, 0], [0, 1]], np.float32), "NaN or infinite"),
        (np.array([[1, 0], [np.inf, 0], [0, 1]], np.float32), "NaN or infinite"),
        (np.array([[1, 0], [1e30, 0], [0, 1]], np.float32), "magnitude 1e+30"),
        (np.zeros((3, 0), np.float32), "1 to 16384 dimensions"),
        (np.zeros((2, 4), np.float32), "one row per candidate (3)"),
    ],
    ids=["nan", "inf", "huge", "no-dims", "fewer-rows"],
)
def test_embeddings_must_agree_with_candidates_and_be_sane(
    load_model: Any, pb_utils: ModuleType, vectors: np.ndarray, expected: str
) -> None:
    message = refusal(
        load_model,
        pb_utils,
        CANDIDATES=column("a", "b", "c"),
        EMBEDDINGS=vectors,
        OPTIONS=options_tensor(GOOD_OPTIONS),
    )
    assert "EMBEDDINGS" in message and expected in message, message


def test_more_candidates_than_samples_are_refused(load_model: Any, pb_utils: ModuleType) -> None:
    message = refusal(
        load_model,
        pb_utils,
        CANDIDATES=column(*"abcd"),
        EMBEDDINGS=unit([[1, 0]] * 4),
        OPTIONS=options_tensor(GOOD_OPTIONS),  # num_samples 3
    )
    assert message == "CANDIDATES has 4 rows, over the limit of 3"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("not json", "OPTIONS is not valid JSON"),
        ("[1, 2]", "OPTIONS must be a JSON object"),
        (GOOD_OPTIONS[:-1] + ', "verbose": true}', "unknown key(s): 'verbose'"),
        (GOOD_OPTIONS.replace('"num_samples": 3', '"num_samples": 1e400'), "'num_samples'"),
        (GOOD_OPTIONS.replace('"sigma": 0.15', '"sigma": NaN'), "NaN, which is not JSON"),
        (GOOD_OPTIONS.replace('"policy": "answer"', '"policy": ["answer"]'), "'policy'"),
    ],
    ids=["not-json", "array", "unknown-key", "float-count", "nan-literal", "policy-type"],
)
def test_malformed_options_are_refused_by_name(
    load_model: Any, pb_utils: ModuleType, options: str, expected: str
) -> None:
    message = refusal(
        load_model,
        pb_utils,
        CANDIDATES=column("a", "b", "c"),
        EMBEDDINGS=unit([[1, 0]] * 3),
        OPTIONS=options_tensor(options),
    )
    assert "OPTIONS" in message and expected in message, message


def test_evidence_adds_up_with_empty_answers(load_model: Any, pb_utils: ModuleType) -> None:
    """The finding: an empty original among ten gave CLUSTER_SIZES [9, 0]; now [9, 1]."""
    texts = ["", *["yes"] * 9]
    response = aggregate(load_model, pb_utils, texts, unit([[1, 0]] * 10))
    out = {t.name(): t.as_numpy() for t in response.output_tensors()}
    assert out["CLUSTER_SIZES"].tolist() == [9, 1]
    assert int(out["CLUSTER_SIZES"].sum()) == int(out["NUM_SAMPLES_USED"][0]) == 10
