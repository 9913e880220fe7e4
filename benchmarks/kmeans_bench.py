"""Time the batched kmeans2 against scikit-learn's KMeans on SmoothGuard-shaped input.

Why: k-means runs on every request, so a per-request scikit-learn call (random restarts,
Python overhead, no batching, CPU only) would be a fixed cost in front of every answer. This
script measures B requests x N answers x D = 384 (a MiniLM-sized embedding) and also checks
that both find the same partition.

    python benchmarks/kmeans_bench.py --out out/kmeans_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.cluster import KMeans

from smoothguard.core.kmeans import kmeans2
from smoothguard.core.xp import get_xp, to_numpy


def make_batch(b: int, n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-normalised embeddings, per request a majority and a minority answer (0..N/2 of
    them; 0 = every answer agrees and the 2-way split is just noise). Also returns the
    minority sizes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(b, 2, d))
    minority = rng.integers(0, n // 2 + 1, size=b)
    member = np.arange(n)[None, :] >= (n - minority[:, None])  # last `minority` are cluster 1
    x = np.take_along_axis(centres, member[:, :, None].astype(int), axis=1)
    x = x + rng.normal(size=(b, n, d)) * 0.3
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    return x.astype(np.float32), minority


def median_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up: imports, allocations, CuPy kernel compilation
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sklearn_all(x: np.ndarray, n_init: int) -> list[KMeans]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [KMeans(n_clusters=2, n_init=n_init, random_state=0).fit(xi) for xi in x]


def same_partition(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.all(a == b, axis=1) | np.all(a == 1 - b, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("-n", "--num-samples", type=int, nargs="+", default=[10])
    ap.add_argument("-d", "--dim", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", choices=["auto", "cpu", "gpu"], default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    xp = get_xp(args.device)
    if xp is np:

        def sync() -> None:
            pass

    else:

        def sync() -> None:
            xp.cuda.Stream.null.synchronize()

    rows = []
    for n in args.num_samples:
        for b in args.batches:
            x, minority = make_batch(b, n, args.dim, args.seed + b + 1000 * n)
            xd = xp.asarray(x)
            ref = sklearn_all(x.astype(np.float64), 10)
            ref_labels = np.stack([k.labels_ for k in ref])
            ref_inertia = np.array([k.inertia_ for k in ref])
            res = kmeans2(xd)
            ours, ours_inertia = to_numpy(res.labels), to_numpy(res.inertia)
            agree = same_partition(ours, ref_labels)
            structured = minority > 0
            row = {
                "B": b,
                "N": n,
                "D": args.dim,
                "ours_s": median_time(lambda xd=xd: kmeans2(xd), args.repeats, sync),
                "ours_lloyd_s": median_time(
                    lambda xd=xd: kmeans2(xd, exact_max_n=0), args.repeats, sync
                ),
                "sklearn_ninit10_s": median_time(
                    lambda x=x: sklearn_all(x, 10), max(3, args.repeats // 2), sync
                ),
                "sklearn_ninit1_s": median_time(lambda x=x: sklearn_all(x, 1), args.repeats, sync),
                "requests_with_two_answers": int(structured.sum()),
                "same_partition_two_answers": float(agree[structured].mean())
                if structured.any()
                else None,
                "same_partition_all": float(agree.mean()),
                "ours_inertia_le_sklearn": float(
                    np.mean(ours_inertia <= ref_inertia * (1 + 1e-6) + 1e-9)
                ),
            }
            rows.append(row)

    header = (
        f"{'B':>4} {'N':>3} {'ours ms':>9} {'ours-lloyd ms':>14} {'skl n_init=10 ms':>17} "
        f"{'skl n_init=1 ms':>16} {'vs n_init=10':>13} {'same partition*':>16} "
        f"{'inertia<=skl':>13}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['B']:>4} {r['N']:>3} {r['ours_s'] * 1e3:>9.3f} {r['ours_lloyd_s'] * 1e3:>14.3f} "
            f"{r['sklearn_ninit10_s'] * 1e3:>17.2f} {r['sklearn_ninit1_s'] * 1e3:>16.2f} "
            f"{r['sklearn_ninit10_s'] / r['ours_s']:>12.0f}x "
            f"{r['same_partition_two_answers'] or 0:>16.0%} {r['ours_inertia_le_sklearn']:>13.0%}"
        )
    print("* among requests whose answers really form two groups (minority > 0)")

    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": args.device if xp is np else "gpu",
        "repeats": args.repeats,
        "statistic": "median seconds per call over all B requests",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": env, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
