"""Majority vote over the N candidate answers: cluster their embeddings, pick a representative.

Rules (the policy and the evidence reported to clients depend on them):

* Majority = the larger of the two k-means clusters. On a tie the cluster that holds the
  unperturbed answer (``original_index``) wins and ``tie`` is set; the original is then
  not outvoted.
* Chosen = the majority member nearest the majority centroid. Distances within
  ``same_tol`` x (mean squared norm) of the smallest count as equal, so encoder float
  jitter cannot displace the original; among equals the original wins, then the lowest
  index.
* N = 1, or all embeddings (near-)identical: one cluster, sizes ``(N, 0)``, agreement 1.0,
  chosen = the original.
* Empty answers (``empty`` mask, i.e. text that is "" after strip) carry no vote: they are
  left out of clustering, never chosen while a non-empty answer exists, have label 0, and
  count in the denominator of ``agreement`` (``majority size / N``), so a batch of empty
  generations lowers agreement instead of forming a "majority of nothing". If the original
  is empty it cannot be in the majority, so ``original_outvoted`` is True (and on a tie the
  cluster of the lowest-index non-empty answer wins).
* ``cluster_sizes`` is (majority size, N - majority size): the second number counts every
  answer outside the majority, the other cluster and the empty answers, so the two always
  sum to N, the samples used (a client checks the evidence by adding them up). Without
  empty answers it is exactly the two clusters' sizes, larger first.
* All answers empty: chosen = the original, sizes ``(0, N)``, agreement 0.0,
  ``original_outvoted`` False (nothing outvoted it; low agreement already flags it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from smoothguard.core.kmeans import kmeans2
from smoothguard.core.xp import array_module, is_cupy, to_numpy

# Below this many points in one call (requests x candidates) the selection runs on the host
# even for CuPy input: a CuPy pass costs 2.6-5 ms on an H200 whatever its size (kernel
# launches, synchronisations), NumPy 0.15-0.6 ms for 4-32 points of 384-768 dims, 2.1-3.0 ms
# at 128 and 6.8-9.2 ms at 256 (select on one request, N = 4-512, swept on an H200 on
# 2026-11-30; build/gpu_check.py times the N = 10 case). A served request has N = 10: 0.25 ms
# on the host instead of 2.7 on the device. The selection is the same either way.
GPU_MIN_POINTS = 192


@dataclass(frozen=True)
class Selection:
    chosen_index: int
    cluster_sizes: tuple[int, int]  # (majority, everything else); always sums to N
    agreement: float  # majority size / N (N counts empty answers too)
    original_outvoted: bool  # the unperturbed answer is not in the majority cluster
    tie: bool  # both clusters had the same size; the original's cluster was taken
    labels: tuple[int, ...]  # 1 = majority cluster member


def select(
    embeddings: Any,
    *,
    original_index: int = 0,
    empty: Any | None = None,
    same_tol: float = 1e-6,
) -> list[Selection]:
    """One Selection per request of ``embeddings`` ``[B, N, D]`` (NumPy or CuPy)."""
    xp = array_module(embeddings)
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be [B, N, D], got shape {embeddings.shape}")
    b, n, _ = embeddings.shape
    if n < 1:
        raise ValueError("need at least one candidate per request")
    if is_cupy(embeddings) and b * n < GPU_MIN_POINTS:
        embeddings, xp = to_numpy(embeddings), np
    if not 0 <= original_index < n:
        raise ValueError(f"original_index {original_index} outside [0, {n})")
    if empty is None:
        empty_np = np.zeros((b, n), dtype=bool)
    else:
        empty_np = to_numpy(empty).astype(bool)
        if empty_np.shape != (b, n):
            raise ValueError(f"empty must have shape {(b, n)}, got {empty_np.shape}")

    results: list[Selection | None] = [None] * b
    full = np.flatnonzero(~empty_np.any(axis=1))
    if full.size:
        # Requests without empty answers share one batched clustering call.
        sub = embeddings[xp.asarray(full)] if full.size < b else embeddings
        for row, sel in zip(
            full.tolist(), _select_batch(sub, original_index, same_tol), strict=True
        ):
            results[row] = sel
    for row in np.flatnonzero(empty_np.any(axis=1)).tolist():
        results[row] = _select_with_empties(
            embeddings[row], empty_np[row], original_index, same_tol
        )
    return results  # type: ignore[return-value]


def select_one(
    embeddings: Any,
    *,
    original_index: int = 0,
    empty: Any | None = None,
    same_tol: float = 1e-6,
) -> Selection:
    """Selection for a single request, ``embeddings`` ``[N, D]``."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {embeddings.shape}")
    mask = None if empty is None else np.asarray(to_numpy(empty), dtype=bool)[None]
    return select(embeddings[None], original_index=original_index, empty=mask, same_tol=same_tol)[0]


def _select_with_empties(
    emb: Any, empty: np.ndarray, original_index: int, same_tol: float
) -> Selection:
    n = emb.shape[0]
    keep = np.flatnonzero(~empty)
    if keep.size == 0:
        return Selection(
            chosen_index=original_index,
            cluster_sizes=(0, n),
            agreement=0.0,
            original_outvoted=False,
            tie=False,
            labels=(0,) * n,
        )
    xp = array_module(emb)
    # The original is absent from the subset when it is empty; index -1 then means "none",
    # and the lowest kept index (subset position 0) plays its part on ties.
    pos = np.searchsorted(keep, original_index)
    sub_orig = int(pos) if pos < keep.size and keep[pos] == original_index else -1
    sel = _select_batch(emb[xp.asarray(keep)][None], sub_orig, same_tol, total=n)[0]
    labels = [0] * n
    for j, i in enumerate(keep.tolist()):
        labels[i] = sel.labels[j]
    return Selection(
        chosen_index=int(keep[sel.chosen_index]),
        cluster_sizes=(sel.cluster_sizes[0], n - sel.cluster_sizes[0]),
        agreement=sel.agreement,
        original_outvoted=bool(empty[original_index]) or sel.original_outvoted,
        tie=sel.tie,
        labels=tuple(labels),
    )


def _select_batch(
    emb: Any, original_index: int, same_tol: float, total: int | None = None
) -> list[Selection]:
    """Vectorised core. ``original_index`` -1: no original in this set (it was empty)."""
    xp = array_module(emb)
    b, n, _ = emb.shape
    total = n if total is None else total
    km = kmeans2(emb, same_tol=same_tol)
    labels = km.labels  # cluster 0 holds point 0
    size1 = labels.sum(axis=1)  # [B]
    size0 = n - size1
    # Majority cluster id per request; on a tie, the original's cluster (or point 0's).
    orig_label = labels[:, original_index] if original_index >= 0 else xp.zeros_like(size1)
    tie = (size0 == size1) & (size1 > 0)
    major = xp.where(size1 > size0, 1, xp.where(size0 > size1, 0, orig_label))
    in_major = labels == major[:, None]  # [B, N]

    x64 = xp.asarray(emb, dtype=xp.float64)
    centre = xp.where(major[:, None] == 1, km.centroids[:, 1], km.centroids[:, 0])
    dist = ((x64 - xp.asarray(centre, dtype=xp.float64)[:, None, :]) ** 2).sum(axis=2)
    dist = xp.where(in_major, dist, xp.inf)
    scale = xp.einsum("bnd,bnd->b", x64, x64) / n
    near = dist <= dist.min(axis=1, keepdims=True) + same_tol * scale[:, None]
    first_near = xp.argmax(near, axis=1)  # lowest index among the nearest
    if original_index >= 0:
        chosen = xp.where(near[:, original_index], original_index, first_near)
    else:
        chosen = first_near

    major_size = xp.where(major == 1, size1, size0)
    minor_size = n - major_size
    outvoted = ~in_major[:, original_index] if original_index >= 0 else xp.ones(b, dtype=bool)

    host = [to_numpy(a) for a in (chosen, major_size, minor_size, outvoted, tie, in_major)]
    chosen_h, major_h, minor_h, outvoted_h, tie_h, in_major_h = host
    return [
        Selection(
            chosen_index=int(chosen_h[i]),
            cluster_sizes=(int(major_h[i]), int(minor_h[i])),
            agreement=float(major_h[i]) / total,
            original_outvoted=bool(outvoted_h[i]),
            tie=bool(tie_h[i]),
            labels=tuple(int(v) for v in in_major_h[i]),
        )
        for i in range(b)
    ]
