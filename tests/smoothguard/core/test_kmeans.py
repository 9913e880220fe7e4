"""kmeans2 against scikit-learn: same partition on clusterable data, never worse inertia."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

from smoothguard.core.kmeans import EXACT_MAX_N, kmeans2


def _sklearn(x: np.ndarray) -> KMeans:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on duplicate points
        return KMeans(n_clusters=2, n_init=10, random_state=0).fit(x.astype(np.float64))


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    a = np.asarray(a)
    b = np.asarray(b)
    return bool(np.array_equal(a, b) or np.array_equal(a, 1 - b))


@st.composite
def two_blobs(draw, max_n: int = 24):
    """Two well separated blobs of random sizes, dimension and separation, shuffled."""
    n0 = draw(st.integers(1, max_n - 1))
    n1 = draw(st.integers(1, max_n - n0))
    d = draw(st.integers(1, 16))
    sep = draw(st.floats(8.0, 100.0))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    offset = rng.normal(size=d) * 5
    a = rng.uniform(-1, 1, size=(n0, d)) / np.sqrt(d) + offset
    b = rng.uniform(-1, 1, size=(n1, d)) / np.sqrt(d) + offset + sep * direction
    x = np.concatenate([a, b])
    truth = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    order = rng.permutation(n0 + n1)
    return x[order], truth[order]


@settings(max_examples=60, deadline=None)
@given(data=two_blobs(), dtype=st.sampled_from([np.float32, np.float64]))
def test_partition_agrees_with_sklearn_on_blobs(data, dtype) -> None:
    x, truth = data
    ours = kmeans2(x[None].astype(dtype))
    ref = _sklearn(x)
    assert _same_partition(ours.labels[0], ref.labels_)
    assert _same_partition(ours.labels[0], truth)


@settings(max_examples=40, deadline=None)
@given(data=two_blobs(max_n=20))
def test_lloyd_path_agrees_with_sklearn_on_blobs(data) -> None:
    x, _ = data
    ours = kmeans2(x[None], exact_max_n=0)  # force the Lloyd path even for small N
    assert _same_partition(ours.labels[0], _sklearn(x).labels_)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, EXACT_MAX_N),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    distinct=st.integers(1, 12),
    scale=st.sampled_from([1e-3, 1.0, 10.0]),
)
def test_inertia_never_worse_than_sklearn(n, d, seed, distinct, scale) -> None:
    """Arbitrary data, duplicates included: the exact search finds the global optimum."""
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(distinct, d)) * scale
    x = pool[rng.integers(0, distinct, size=n)]
    ours = kmeans2(x[None])
    ref = _sklearn(x)
    total = float(((x - x.mean(0)) ** 2).sum())
    sq = float((x**2).sum())
    eps = 1e-9 * max(sq, 1e-12) + 1e-6 * sq  # 1e-6: the same_tol "all identical" allowance
    assert ours.inertia[0] <= ref.inertia_ + eps
    assert ours.inertia[0] <= total + 1e-9 * max(sq, 1e-12)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 4),
    n=st.integers(1, 30),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_result_is_a_lloyd_fixed_point_and_canonical(b, n, d, seed) -> None:
    x = np.random.default_rng(seed).normal(size=(b, n, d))
    res = kmeans2(x)
    assert res.labels.shape == (b, n) and res.labels.dtype == np.int32
    assert res.centroids.shape == (b, 2, d) and res.inertia.shape == (b,)
    assert np.all(res.labels[:, 0] == 0)  # cluster 0 holds point 0
    for i in range(b):
        lab = res.labels[i]
        for k in (0, 1):
            if np.any(lab == k):
                np.testing.assert_allclose(res.centroids[i, k], x[i][lab == k].mean(0), atol=1e-9)
        dist = ((x[i][:, None, :] - res.centroids[i][None]) ** 2).sum(-1)
        own = dist[np.arange(n), lab]
        assert np.all(own <= dist.min(1) + 1e-9)
        np.testing.assert_allclose(res.inertia[i], own.sum(), rtol=1e-9, atol=1e-12)


def test_lloyd_seeds_reach_the_optimum_where_one_seed_does_not() -> None:
    # From the farthest pair alone Lloyd stops at inertia 1.68; the other seeds find 1.30.
    x = np.array([[-0.66], [-0.44], [-1.17], [1.74], [-0.5], [0.33], [-0.26], [1.58], [1.32]])
    lloyd = kmeans2(x[None], exact_max_n=0)
    assert lloyd.inertia[0] == pytest.approx(kmeans2(x[None]).inertia[0], rel=1e-12)
    assert lloyd.inertia[0] == pytest.approx(1.2994666666666665, rel=1e-9)


def test_lloyd_path_usually_finds_the_global_optimum() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(100):
        x = rng.normal(size=(1, int(rng.integers(5, 13)), int(rng.integers(1, 6))))
        exact = kmeans2(x).inertia[0]
        hits += kmeans2(x, exact_max_n=0).inertia[0] <= exact * (1 + 1e-9)
    assert hits >= 85  # 91 at the time of writing; the farthest-pair seed alone gets ~70


def test_batched_equals_one_by_one() -> None:
    x = np.random.default_rng(3).normal(size=(6, 10, 8)).astype(np.float32)
    batched = kmeans2(x)
    for i in range(6):
        single = kmeans2(x[i : i + 1])
        np.testing.assert_array_equal(batched.labels[i], single.labels[0])
        np.testing.assert_allclose(batched.inertia[i], single.inertia[0])


def test_deterministic() -> None:
    x = np.random.default_rng(4).normal(size=(3, 20, 5))
    a, b = kmeans2(x), kmeans2(x)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_single_point() -> None:
    res = kmeans2(np.array([[[1.0, 2.0]]]))
    assert res.labels.tolist() == [[0]]
    np.testing.assert_array_equal(res.centroids[0], [[1.0, 2.0], [1.0, 2.0]])
    assert res.inertia[0] == 0.0


def test_two_points() -> None:
    res = kmeans2(np.array([[[0.0, 0.0], [3.0, 4.0]]]))
    assert res.labels.tolist() == [[0, 1]]
    assert res.inertia[0] == 0.0


@pytest.mark.parametrize("n", [2, 10, 20])
def test_identical_points_form_one_cluster(n: int) -> None:
    x = np.tile(np.array([0.6, 0.8], dtype=np.float32), (1, n, 1))
    res = kmeans2(x)
    assert res.labels.tolist() == [[0] * n]
    np.testing.assert_array_equal(res.centroids[0, 1], res.centroids[0, 0])  # empty -> copy
    assert res.inertia[0] == 0.0


def test_float_jitter_counts_as_identical() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(size=384)
    base /= np.linalg.norm(base)
    x = (base + rng.normal(size=(10, 384)) * 1e-6).astype(np.float32)[None]
    assert kmeans2(x).labels.tolist() == [[0] * 10]
    # With the allowance off the jitter is split like any other data.
    assert kmeans2(x.astype(np.float64), same_tol=0.0).labels.sum() > 0


def test_all_zero_points() -> None:
    res = kmeans2(np.zeros((2, 5, 3)))
    assert res.labels.sum() == 0 and np.all(res.inertia == 0)


def test_duplicates_split_by_value() -> None:
    x = np.array([[[0.0], [0.0], [5.0], [0.0], [5.0], [5.0], [5.0]]])
    for exact_max_n in (EXACT_MAX_N, 0):
        res = kmeans2(x, exact_max_n=exact_max_n)
        assert res.labels.tolist() == [[0, 0, 1, 0, 1, 1, 1]]
        assert res.inertia[0] == 0.0


def test_empty_batch() -> None:
    res = kmeans2(np.zeros((0, 4, 3)))
    assert res.labels.shape == (0, 4) and res.centroids.shape == (0, 2, 3)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        kmeans2(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        kmeans2(np.full((1, 3, 2), np.nan))
    with pytest.raises(ValueError, match="at least one"):
        kmeans2(np.zeros((1, 0, 2)))
    with pytest.raises(ValueError, match="exact_max_n"):
        kmeans2(np.zeros((1, 3, 2)), exact_max_n=40)


def test_float32_input_keeps_dtype() -> None:
    x = np.random.default_rng(6).normal(size=(2, 10, 4)).astype(np.float32)
    assert kmeans2(x).centroids.dtype == np.float32


def test_emptied_cluster_keeps_its_old_centroid() -> None:
    from smoothguard.core.kmeans import _update

    w = np.array([[[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]]])  # [B=1, P=1, 2, N=3]
    labels = np.zeros((1, 1, 3), dtype=bool)  # every point went to cluster 0
    new = _update(np, w, labels)
    np.testing.assert_allclose(new[0, 0, 0], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_array_equal(new[0, 0, 1], w[0, 0, 1])


def test_lloyd_with_heavy_duplicates() -> None:
    rng = np.random.default_rng(7)
    x = np.concatenate([np.zeros((30, 3)), rng.normal(size=(1, 3)) * 1e-3, np.ones((5, 3))])
    res = kmeans2(x[None])
    assert np.all(np.isfinite(res.centroids))
    assert res.labels[0, :30].tolist() == [0] * 30
    assert res.labels[0, -5:].tolist() == [1] * 5
