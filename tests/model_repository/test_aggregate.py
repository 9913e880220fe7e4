"""The aggregate step: evidence tensors and the policy, from candidates and embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from smoothguard.core.certify import answer_class, certify
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


# ------------------------------------------------------------------ certified mode

SYNTHVLM = str(Path(__file__).resolve().parents[2] / "models" / "synthvlm")
SYNTHVLM_MIN_STD = 0.26130258  # its processor's smallest channel std
WORDS = {"yes": [1.0, 0.0], "no": [0.0, 1.0]}


def certify_aggregate(
    load_model: Any,
    pb: ModuleType,
    texts: list[str],
    settings: DefenseSettings | None = None,
    *,
    ticket: bool = False,
    **opts: Any,
) -> tuple[Any, Any]:
    """aggregate's response to a certify request with these answers, and the model."""
    settings = settings or DefenseSettings()
    model = load_model("aggregate").TritonPythonModel()
    params = settings.to_parameters() | {"device": "cpu", "mllm_path": SYNTHVLM}
    model.initialize(pb.model_args(params))
    options = resolve_options(settings, certify=True, **opts)
    text = model.tickets.issue(options) if ticket else options.to_json()
    vectors = unit([WORDS.get(answer_class(t) or "", [0.7, 0.7]) for t in texts])
    request = pb.Request(
        CANDIDATES=column(*texts), EMBEDDINGS=vectors, OPTIONS=options_tensor(text)
    )
    (response,) = model.execute([request])
    return response, model


def outputs(response: Any) -> dict[str, Any]:
    assert not response.has_error(), response.error().message()
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


def test_certify_answers_the_certified_class_with_its_pixel_radius(
    load_model: Any, pb_utils: ModuleType
) -> None:
    """copy 0 (clean) takes no part: it says "no" and is outvoted; 1..10 select, 11.. estimate."""
    texts = ["no", *["yes"] * 10, *["Yes, there is."] * 99, "no"]
    response, _ = certify_aggregate(load_model, pb_utils, texts, return_candidates=True)
    out = outputs(response)
    expected = certify(texts[1:11], texts[11:], sigma=0.15 * SYNTHVLM_MIN_STD, alpha=0.001)
    assert expected.label == "yes" and expected.estimation_counts == {"yes": 99, "no": 1}
    assert out["TEXT"][0].decode() == "yes"
    assert (out["DECISION"][0].decode(), out["REASON"][0].decode()) == ("answered", "certified")
    assert out["CERTIFIED"].tolist() == [True]
    assert out["CERTIFIED_RADIUS"].dtype == np.float32
    assert out["CERTIFIED_RADIUS"][0] == np.float32(expected.radius) and expected.radius > 0
    # the vote's evidence, over all 111 answers
    assert out["NUM_SAMPLES_USED"].tolist() == [111] and len(out["CANDIDATES"]) == 111
    assert out["ORIGINAL_TEXT"][0].decode() == "no" and out["ORIGINAL_OUTVOTED"].tolist() == [True]


def test_certify_radius_in_pixel_noise_units(load_model: Any, pb_utils: ModuleType) -> None:
    from statistics import NormalDist

    settings = DefenseSettings(noise_unit="pixel")
    texts = ["yes"] * 111
    out = outputs(certify_aggregate(load_model, pb_utils, texts, settings, sigma=0.25)[0])
    p_lower = certify(texts[1:11], texts[11:], sigma=1.0, alpha=0.001).p_lower
    assert out["CERTIFIED_RADIUS"][0] == np.float32(0.25 * NormalDist().inv_cdf(p_lower))


@pytest.mark.parametrize(
    ("texts", "answer_set"),
    [
        (["yes", *["It is a red square."] * 110], None),  # answers outside the set
        (["yes", *["no"] * 10, *["yes"] * 100], None),  # selection and estimation disagree
        (["cat", *["cat"] * 55, *["dog"] * 55], ("cat", "dog")),  # a coin flip
    ],
    ids=["outside-the-set", "split-respected", "coin-flip"],
)
def test_certify_abstains_without_a_certificate(
    load_model: Any, pb_utils: ModuleType, texts: list[str], answer_set: Any
) -> None:
    settings = DefenseSettings(abstain_text="(no certified answer)")
    opts = {} if answer_set is None else {"answer_set": answer_set}
    out = outputs(certify_aggregate(load_model, pb_utils, texts, settings, **opts)[0])
    assert out["TEXT"][0].decode() == "(no certified answer)"
    assert out["DECISION"][0].decode() == "abstained"
    assert out["REASON"][0].decode() == "not_certified"
    assert out["CERTIFIED"].tolist() == [False] and out["CERTIFIED_RADIUS"].tolist() == [0.0]


def test_certify_needs_every_candidate(load_model: Any, pb_utils: ModuleType) -> None:
    response, _ = certify_aggregate(load_model, pb_utils, ["yes"] * 100)
    assert response.has_error()
    assert response.error().code() == pb_utils.TritonError.INVALID_ARG
    assert "a certify request needs all 111" in response.error().message()


def test_other_requests_are_not_certified(load_model: Any, pb_utils: ModuleType) -> None:
    response = aggregate(load_model, pb_utils, ["yes"] * 3, unit([[1, 0]] * 3))
    out = outputs(response)
    assert out["CERTIFIED"].tolist() == [False] and out["CERTIFIED_RADIUS"].tolist() == [0.0]
    assert out["REASON"][0].decode() == "ok"


def test_certify_requests_are_counted_and_audited_like_the_rest(
    load_model: Any, pb_utils: ModuleType
) -> None:
    settings = DefenseSettings(audit_log=True)
    pb_utils.Logger.lines.clear()
    texts = ["yes"] * 111
    response, model = certify_aggregate(load_model, pb_utils, texts, settings, ticket=True)
    assert outputs(response)["REASON"][0].decode() == "certified"
    (requests,) = pb_utils.MetricFamily.created["smoothguard_requests_total"]
    assert {m.labels["decision"]: m.value() for m in requests.metrics}["answered"] == 1
    record = json.loads(pb_utils.Logger.lines[-1])
    assert record["ensemble"] and record["reason"] == "certified" and record["certify"]
    assert record["certified_radius"] > 0 and record["num_samples_used"] == 111
    model.finalize()
