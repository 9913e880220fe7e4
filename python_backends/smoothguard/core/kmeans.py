"""Batched, deterministic 2-means for the SmoothGuard vote.

Why by hand: the server clusters N ~ 10 answer embeddings for every request; scikit-learn
runs one request at a time on the CPU with random restarts, while this runs a whole batch
in a few array operations on NumPy or CuPy with no randomness (the same answers always give
the same verdict).

How: everything works on the Gram matrix ``G = X X^T`` (``[B, N, N]``, float64), so after
one batched matmul the cost no longer depends on the embedding width D.

* ``N <= exact_max_n`` (default 12, which covers the default N = 10): every one of the
  ``2**(N-1) - 1`` bipartitions is scored at once and the best is kept, i.e. the *global*
  optimum of the 2-means objective. Any partition scikit-learn's Lloyd iterations can end
  in has inertia >= this one, and on data with a clear two-cluster structure both give the
  same partition.
* larger N: Lloyd's algorithm in kernel form from N + 1 deterministic seed pairs (the pair
  "farthest from the mean, then farthest from that", and "point i, then the point farthest
  from i" for each i), all run in one batched pass; the lowest inertia wins.
* on GPU with RAPIDS cuML installed and N >= ``CUML_MIN_N``: cuML's KMeans per request from
  the first of those seed pairs (``backend="auto"``; build/gpu_check.py times both). Below
  that size one batched CuPy pass over all requests beats a cuML call per request.

Conventions (the aggregator relies on them):

* cluster 0 is the cluster that holds point 0 (the unperturbed answer);
* if all points coincide (every squared distance to their mean <= ``same_tol`` times the
  mean squared norm, which absorbs encoder float jitter), all labels are 0 and cluster 1 is
  *empty*: its centroid is a copy of centroid 0. N = 1 is the same case;
* a cluster that empties during Lloyd keeps its previous centroid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from smoothguard.core.xp import array_module, cuml_available

EXACT_MAX_N = 12
CUML_MIN_N = 256  # below this the batched CuPy Lloyd wins (see build/gpu_check.py)
BACKENDS: tuple[str, ...] = ("auto", "xp", "cuml")
EXACT_LIMIT = 16  # 32767 partitions; beyond that the exhaustive search costs more than it buys


@dataclass(frozen=True)
class KMeansResult:
    labels: Any  # [B, N] int32, 0 or 1; label 0 = cluster of point 0
    centroids: Any  # [B, 2, D], dtype of x (float64 for non-float input)
    inertia: Any  # [B] float64, sum of squared distances to own centroid


def kmeans2(
    x: Any,
    *,
    max_iter: int = 50,
    tol: float = 1e-6,
    same_tol: float = 1e-6,
    exact_max_n: int = EXACT_MAX_N,
    backend: str = "auto",
) -> KMeansResult:
    """2-means of each request in ``x`` ``[B, N, D]``; see the module docstring.

    ``tol``: Lloyd stops once no centroid moves by more than ``tol`` times the mean squared
    norm (squared distance), or no label changes. Only used when ``N > exact_max_n``.
    ``backend``: "xp" (NumPy/CuPy, batched), "cuml" (GPU input only), or "auto".
    """
    xp = array_module(x)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if x.ndim != 3:
        raise ValueError(f"x must be [B, N, D], got shape {x.shape}")
    b, n, _ = x.shape
    if n < 1:
        raise ValueError("x needs at least one point per request")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if exact_max_n > EXACT_LIMIT:
        raise ValueError(f"exact_max_n above {EXACT_LIMIT} would score 2**(N-1) partitions")
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    x64 = xp.asarray(x, dtype=xp.float64)
    if not bool(xp.all(xp.isfinite(x64))):
        raise ValueError("x contains NaN or infinity")

    sqnorm = xp.einsum("bnd,bnd->bn", x64, x64)  # [B, N]
    scale = sqnorm.mean(axis=1)  # [B]
    diff = x64 - x64.mean(axis=1, keepdims=True)
    spread = xp.einsum("bnd,bnd->bn", diff, diff)  # [B, N], exact zeros for identical points
    degenerate = spread.max(axis=1) <= same_tol * scale  # [B]

    if b == 0 or n == 1:
        labels = xp.zeros((b, n), dtype=xp.int32)
    else:
        gram = x64 @ x64.transpose(0, 2, 1)  # [B, N, N]
        if n <= exact_max_n:
            labels = _exact(xp, gram)
        elif _use_cuml(xp, backend, n):
            labels = _cuml_labels(xp, x64, gram, max_iter=max_iter, tol=tol)
        else:
            labels = _lloyd(xp, gram, max_iter=max_iter, tol=tol, scale=scale)
        labels = xp.where(degenerate[:, None], 0, labels)
        # Canonical labels: cluster 0 holds point 0.
        labels = xp.where(labels[:, :1] == 1, 1 - labels, labels).astype(xp.int32)

    centroids, inertia = _centroids(xp, x64, labels)
    return KMeansResult(labels=labels, centroids=centroids.astype(out_dtype), inertia=inertia)


def _use_cuml(xp: ModuleType, backend: str, n: int) -> bool:
    """cuML only for device arrays, where installed, and (auto) where it is the faster one."""
    if backend == "xp" or xp is np:
        if backend == "cuml":
            raise ValueError("backend='cuml' needs CuPy (GPU) input")
        return False
    if backend == "cuml":
        if not cuml_available():
            raise RuntimeError("backend='cuml' requested but cuML is not installed")
        return True
    return n >= CUML_MIN_N and cuml_available()


def _cuml_labels(xp: ModuleType, x64: Any, gram: Any, *, max_iter: int, tol: float) -> Any:
    """cuML KMeans per request, seeded with the deterministic farthest pair (no randomness)."""
    from cuml.cluster import KMeans  # type: ignore[import-not-found]

    b, n, _ = gram.shape
    diag = xp.diagonal(gram, axis1=1, axis2=2)
    to_mean = diag - 2.0 * gram.mean(axis=2) + gram.mean(axis=(1, 2))[:, None]
    first = xp.argmax(to_mean, axis=1)  # [B]
    rows = xp.arange(b)
    dist = diag[rows, first][:, None] + diag - 2.0 * gram[rows, first]  # [B, N]
    second = xp.argmax(dist, axis=1)
    labels = xp.empty((b, n), dtype=xp.int32)
    for i in range(b):
        init = xp.stack([x64[i, int(first[i])], x64[i, int(second[i])]])
        model = KMeans(
            n_clusters=2, init=init, n_init=1, max_iter=max_iter, tol=tol, output_type="cupy"
        )
        labels[i] = model.fit_predict(x64[i]).astype(xp.int32)
    return labels


def _exact(xp: ModuleType, gram: Any) -> Any:
    """Score every bipartition with point 0 in cluster 0; returns the best labels [B, N]."""
    b, n, _ = gram.shape
    masks, pairs = _partitions(xp, n)
    m = masks.astype(xp.float64)  # [P, N], 1 = in cluster 1
    n1 = m.sum(axis=1)  # [P]
    n0 = n - n1
    row = gram.sum(axis=2)  # [B, N] = G 1
    total = row.sum(axis=1)  # [B] = 1^T G 1
    s1 = gram.reshape(b, n * n) @ pairs.T  # [B, P] = m^T G m, one GEMM for the whole batch
    s0 = total[:, None] - 2.0 * (row @ m.T) + s1  # (1-m)^T G (1-m)
    # inertia = trace(G) - s0/n0 - s1/n1; the trace is the same for every partition.
    score = s0 / n0[None] + s1 / n1[None]
    best = xp.argmax(score, axis=1)  # first maximum: deterministic on exact ties
    return masks[best].astype(xp.int32)


def _partitions(xp: ModuleType, n: int) -> tuple[Any, Any]:
    """Masks [P, N] of all bipartitions (point 0 always in cluster 0) and their outer products
    flattened to [P, N*N]; cached because they depend on N only."""
    device = 0 if xp.__name__ == "numpy" else int(xp.cuda.Device().id)
    return _partitions_cached(xp, n, device)


@functools.lru_cache(maxsize=32)
def _partitions_cached(xp: ModuleType, n: int, device: int) -> tuple[Any, Any]:
    codes = xp.arange(1, 2 ** (n - 1), dtype=xp.int64)  # [P]; 0 would leave cluster 1 empty
    bits = (codes[:, None] >> xp.arange(n - 1, dtype=xp.int64)[None, :]) & 1
    masks = xp.concatenate([xp.zeros((codes.shape[0], 1), dtype=xp.int64), bits], axis=1)
    m = masks.astype(xp.float64)
    pairs = (m[:, :, None] * m[:, None, :]).reshape(m.shape[0], n * n)
    return masks, pairs


def _lloyd(xp: ModuleType, gram: Any, *, max_iter: int, tol: float, scale: Any) -> Any:
    """Kernel Lloyd from N + 1 deterministic seed pairs at once; returns best labels [B, N]."""
    b, n, _ = gram.shape
    diag = xp.diagonal(gram, axis1=1, axis2=2)  # [B, N]
    dist = xp.maximum(diag[:, :, None] + diag[:, None, :] - 2.0 * gram, 0.0)  # [B, N, N]
    to_mean = diag - 2.0 * gram.mean(axis=2) + gram.mean(axis=(1, 2))[:, None]
    first = xp.argmax(to_mean, axis=1)  # [B]
    idx = xp.arange(n)
    a = xp.concatenate([first[:, None], xp.broadcast_to(idx, (b, n))], axis=1)  # [B, P]
    far = xp.argmax(dist, axis=2)  # [B, N]: farthest point from each point
    bb = xp.take_along_axis(far, a, axis=1)  # [B, P]
    p = n + 1
    # Centroids as weights over points: c_k = w_k^T X, so distances need only the Gram.
    w = xp.zeros((b, p, 2, n), dtype=xp.float64)
    w[..., 0, :] = a[..., None] == idx
    w[..., 1, :] = bb[..., None] == idx
    thresh = (tol * scale)[:, None, None]
    labels = None
    for _ in range(max_iter):
        new_labels, _ = _assign(xp, w, gram, diag)
        w_new = _update(xp, w, new_labels)
        delta = w_new - w
        shift = (_times_gram(delta, gram) * delta).sum(axis=3)  # [B, P, 2] squared moves
        w = w_new
        stable = labels is not None and bool(xp.all(new_labels == labels))
        labels = new_labels
        if stable or bool(xp.all(shift <= thresh)):
            break
    labels, cost = _assign(xp, w, gram, diag)
    best = xp.argmin(cost, axis=1)  # [B]
    return xp.take_along_axis(labels, best[:, None, None], axis=1)[:, 0].astype(xp.int32)


def _times_gram(w: Any, gram: Any) -> Any:
    """``w @ G`` for w [B, P, 2, N] as one [P*2, N] x [N, N] product per request (stacked
    tiny matmuls are far slower in NumPy)."""
    b, p, k, n = w.shape
    return (w.reshape(b, p * k, n) @ gram).reshape(b, p, k, n)


def _assign(xp: ModuleType, w: Any, gram: Any, diag: Any) -> tuple[Any, Any]:
    gw = _times_gram(w, gram)  # [B, P, 2, N]
    quad = (gw * w).sum(axis=3)  # [B, P, 2]
    d = diag[:, None, None, :] - 2.0 * gw + quad[..., None]  # [B, P, 2, N]
    labels = d[:, :, 1, :] < d[:, :, 0, :]  # ties go to cluster 0
    cost = xp.where(labels, d[:, :, 1, :], d[:, :, 0, :]).sum(axis=2)  # [B, P]
    return labels, cost


def _update(xp: ModuleType, w: Any, labels: Any) -> Any:
    members = xp.stack([~labels, labels], axis=2).astype(xp.float64)  # [B, P, 2, N]
    counts = members.sum(axis=3, keepdims=True)
    means = members / xp.maximum(counts, 1.0)
    return xp.where(counts > 0, means, w)  # an emptied cluster keeps its old centroid


def _centroids(xp: ModuleType, x64: Any, labels: Any) -> tuple[Any, Any]:
    """Means per cluster (empty cluster 1 -> copy of centroid 0) and the exact inertia."""
    members = xp.stack([labels == 0, labels == 1], axis=1).astype(xp.float64)  # [B, 2, N]
    counts = members.sum(axis=2, keepdims=True)  # [B, 2, 1]
    centroids = (members @ x64) / xp.maximum(counts, 1.0)  # [B, 2, D]
    centroids = xp.where(counts > 0, centroids, centroids[:, :1])
    diff = x64 - centroids[xp.arange(labels.shape[0])[:, None], labels]  # [B, N, D]
    inertia = xp.einsum("bnd,bnd->b", diff, diff)
    return centroids, inertia
