"""The aggregate step: evidence tensors and the policy, from candidates and embeddings."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from smoothguard.settings import DefenseSettings, resolve_options


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
    assert [c.decode() for c in out["ALL_CANDIDATES"]] == texts


def test_monitor_returns_the_original(load_model: Any, pb_utils: ModuleType) -> None:
    texts = ["attacked", "yes", "yes"]
    vectors = unit([[0, 1], [1, 0], [1, 0]])
    response = aggregate(load_model, pb_utils, texts, vectors, policy="monitor")
    out = {t.name(): t.as_numpy() for t in response.output_tensors()}
    assert out["TEXT"][0].decode() == "attacked"
    assert out["DECISION"][0].decode() == "monitored"
    assert out["ORIGINAL_OUTVOTED"].tolist() == [True]
    assert out["ALL_CANDIDATES"].shape == (0,)


def test_mismatched_embeddings_are_a_clean_error(load_model: Any, pb_utils: ModuleType) -> None:
    response = aggregate(load_model, pb_utils, ["a", "b"], unit([[1, 0], [0, 1]])[:1])
    assert response.has_error()
    assert response.error().code() == pb_utils.TritonError.INVALID_ARG
