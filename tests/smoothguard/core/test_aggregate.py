"""The vote: majority, ties, the chosen representative, empty answers, degenerate inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smoothguard.core.aggregate import Selection, select, select_one

CAT = np.array([1.0, 0.0, 0.0])
DOG = np.array([0.0, 1.0, 0.0])
EMPTY = np.array([0.0, 0.0, 1.0])  # what an encoder might give for ""


def _emb(rows: list[np.ndarray], jitter: float = 0.0, seed: int = 0) -> np.ndarray:
    x = np.stack(rows).astype(np.float64)
    if jitter:
        x = x + np.random.default_rng(seed).normal(size=x.shape) * jitter
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_clear_majority_with_original_in_it() -> None:
    sel = select_one(_emb([CAT] * 7 + [DOG] * 3, jitter=0.01))
    assert sel.cluster_sizes == (7, 3)
    assert sel.agreement == pytest.approx(0.7)
    assert not sel.original_outvoted and not sel.tie
    assert sel.labels == (1,) * 7 + (0,) * 3
    assert sel.chosen_index in range(7)


def test_original_outvoted() -> None:
    sel = select_one(_emb([DOG] + [CAT] * 9, jitter=0.01))
    assert sel.cluster_sizes == (9, 1)
    assert sel.original_outvoted
    assert sel.labels[0] == 0 and sel.chosen_index != 0
    assert sel.agreement == pytest.approx(0.9)


def test_chosen_is_nearest_to_the_majority_centroid() -> None:
    bump = np.array([[0, 0.3, 0], [0, 0, 0], [0, 0, 0.05], [0, 0, -0.05]])
    x = _emb([*(CAT + bump), DOG])
    sel = select_one(x)
    members = x[:4]
    centre = members.mean(0)
    assert sel.chosen_index == int(np.argmin(((members - centre) ** 2).sum(1)))
    assert sel.chosen_index != 0


def test_tie_prefers_the_original_cluster() -> None:
    sel = select_one(_emb([DOG] * 5 + [CAT] * 5, jitter=0.01))
    assert sel.tie and not sel.original_outvoted
    assert sel.cluster_sizes == (5, 5)
    assert sel.labels == (1,) * 5 + (0,) * 5
    assert sel.chosen_index in range(5)
    assert sel.agreement == 0.5
    # Same answers, original moved into the other group: the winner follows the original.
    sel2 = select_one(_emb([CAT] + [DOG] * 5 + [CAT] * 4, jitter=0.01))
    assert sel2.tie and sel2.labels[0] == 1 and sel2.labels[1:6] == (0,) * 5


def test_tie_with_non_default_original_index() -> None:
    x = _emb([DOG] * 5 + [CAT] * 5, jitter=0.01)
    sel = select_one(x, original_index=7)
    assert sel.tie and not sel.original_outvoted
    assert sel.labels == (0,) * 5 + (1,) * 5


def test_two_different_answers_is_a_tie_won_by_the_original() -> None:
    sel = select_one(_emb([CAT, DOG]))
    assert sel == Selection(0, (1, 1), 0.5, False, True, (1, 0))


def test_single_answer() -> None:
    sel = select_one(_emb([DOG]))
    assert sel == Selection(0, (1, 0), 1.0, False, False, (1,))


def test_all_identical() -> None:
    sel = select_one(_emb([CAT] * 10))
    assert sel == Selection(0, (10, 0), 1.0, False, False, (1,) * 10)


def test_near_identical_from_encoder_jitter_is_one_cluster_and_keeps_original() -> None:
    sel = select_one(_emb([CAT] * 10, jitter=1e-5, seed=3))
    assert sel.cluster_sizes == (10, 0) and sel.chosen_index == 0


def test_duplicates_prefer_original_then_lowest_index() -> None:
    sel = select_one(_emb([DOG, CAT, CAT, CAT, DOG, CAT]))
    assert sel.cluster_sizes == (4, 2) and sel.original_outvoted
    assert sel.chosen_index == 1  # all four CATs are equally near: lowest index
    sel = select_one(_emb([CAT, DOG, CAT, CAT, DOG, CAT]))
    assert sel.chosen_index == 0  # the original is among the equally near


def test_jittered_duplicates_prefer_a_non_zero_original_index() -> None:
    x = _emb([CAT] * 6 + [DOG] * 2, jitter=1e-5, seed=4)
    assert select_one(x, original_index=3).chosen_index == 3
    assert select_one(x, original_index=3, same_tol=0.0).chosen_index != 3  # jitter decides


def test_empty_answers_are_never_chosen() -> None:
    # Six empty answers embed identically and would otherwise be the biggest cluster.
    x = _emb([CAT, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, CAT, CAT, DOG])
    empty = np.array([False] + [True] * 6 + [False] * 3)
    sel = select_one(x, empty=empty)
    assert sel.chosen_index in (0, 7, 8)
    assert sel.cluster_sizes == (3, 7)  # the DOG and the six empties are outside the majority
    assert sel.agreement == pytest.approx(0.3)  # empties count in N, not in any cluster
    assert not sel.original_outvoted
    assert all(sel.labels[i] == 0 for i in range(1, 7))
    without_mask = select_one(x)
    assert without_mask.chosen_index in range(1, 7)  # proves the mask is what protects us


def test_empty_original_is_outvoted_and_not_chosen() -> None:
    x = _emb([EMPTY, CAT, CAT, DOG])
    sel = select_one(x, empty=[True, False, False, False])
    assert sel.chosen_index in (1, 2)
    assert sel.original_outvoted
    assert sel.cluster_sizes == (2, 2) and sel.agreement == 0.5
    assert sel.labels == (0, 1, 1, 0)


def test_empty_original_tie_goes_to_lowest_non_empty() -> None:
    x = _emb([EMPTY, DOG, CAT])
    sel = select_one(x, empty=[True, False, False])
    assert sel.tie and sel.chosen_index == 1 and sel.original_outvoted


def test_single_non_empty_answer_wins() -> None:
    x = _emb([EMPTY, EMPTY, DOG, EMPTY])
    sel = select_one(x, empty=[True, True, False, True])
    assert sel.chosen_index == 2 and sel.cluster_sizes == (1, 3)
    assert sel.agreement == 0.25 and sel.original_outvoted


def test_all_empty() -> None:
    sel = select_one(_emb([EMPTY] * 4), empty=[True] * 4)
    assert sel == Selection(0, (0, 4), 0.0, False, False, (0, 0, 0, 0))


def test_batch_mixes_requests_with_and_without_empties() -> None:
    a = _emb([CAT, CAT, DOG])
    b = _emb([DOG, EMPTY, DOG])
    c = _emb([CAT, DOG, DOG])
    empty = np.array([[False] * 3, [False, True, False], [False] * 3])
    sels = select(np.stack([a, b, c]), empty=empty)
    assert sels[0] == select_one(a)
    assert sels[1] == select_one(b, empty=empty[1])
    assert sels[2] == select_one(c)
    assert sels[1].chosen_index in (0, 2) and sels[2].original_outvoted


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    n=st.integers(1, 14),
    seed=st.integers(0, 2**32 - 1),
    p_empty=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_invariants(b: int, n: int, seed: int, p_empty: float) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, n, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    empty = rng.random((b, n)) < p_empty
    for i, sel in enumerate(select(x, empty=empty)):
        non_empty = int((~empty[i]).sum())
        assert len(sel.labels) == n
        assert sum(sel.cluster_sizes) == n  # the evidence adds up to the samples used
        assert min(sel.cluster_sizes) >= 0
        if non_empty == n:
            assert sel.cluster_sizes[0] >= sel.cluster_sizes[1]
        assert sum(sel.labels) == sel.cluster_sizes[0]
        assert sel.agreement == pytest.approx(sel.cluster_sizes[0] / n)
        assert 0 <= sel.chosen_index < n
        if non_empty:
            assert not empty[i, sel.chosen_index]
            assert sel.labels[sel.chosen_index] == 1
            assert sel.original_outvoted == (sel.labels[0] == 0)
        else:
            assert sel.chosen_index == 0
        if sel.tie and non_empty == n:
            assert sel.cluster_sizes[0] == sel.cluster_sizes[1] > 0
        if sel.tie and not empty[i, 0]:
            assert not sel.original_outvoted
        if non_empty and sel.cluster_sizes[0] > sel.cluster_sizes[1]:
            assert not sel.tie


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 16),
    dim=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([0.0, 1e-30, 1e-6, 1.0, 1e4]),
    distinct=st.integers(1, 4),
    p_empty=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_cluster_sizes_always_sum_to_the_samples_used(
    n: int, dim: int, seed: int, scale: float, distinct: int, p_empty: float
) -> None:
    """Hostile but finite embeddings (what aggregate's validation lets through: zeros, tiny,
    large up to MAX_EMBEDDING_ABS, few distinct rows repeated, unnormalised) never break the
    evidence: sizes add up to N, the majority is the agreement's numerator, nothing is NaN."""
    rng = np.random.default_rng(seed)
    rows = (rng.normal(size=(distinct, dim)) * scale).astype(np.float32)
    x = rows[rng.integers(0, distinct, n)]
    empty = rng.random(n) < p_empty
    sel = select_one(x, empty=empty)
    assert sum(sel.cluster_sizes) == n and min(sel.cluster_sizes) >= 0
    assert sum(sel.labels) == sel.cluster_sizes[0]
    assert sel.agreement == pytest.approx(sel.cluster_sizes[0] / n)
    assert 0.0 <= sel.agreement <= 1.0
    assert 0 <= sel.chosen_index < n
    if not empty.all():
        assert not empty[sel.chosen_index]


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        select(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        select_one(np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="original_index"):
        select_one(np.eye(3), original_index=3)
    with pytest.raises(ValueError, match="empty"):
        select_one(np.eye(3), empty=[True, False])
