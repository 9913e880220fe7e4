"""CuPy against NumPy for the GPU steps (noise, k-means, pooling); skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from smoothguard.core.aggregate import GPU_MIN_POINTS, select
from smoothguard.core.kmeans import kmeans2
from smoothguard.core.noise import make_rng, noisy_copies
from smoothguard.core.xp import cuml_available, gpu_available

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.skipif(not gpu_available(), reason="no CUDA device visible to CuPy")

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def test_noise_matches_numpy_statistics_and_clean_copy() -> None:
    x = np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32)
    kw = {"num_samples": 64, "sigma": 0.15, "mean": MEAN, "std": STD, "clip": False}
    gpu = noisy_copies(cp.asarray(x), rng=make_rng(cp, 1), **kw)
    cpu = noisy_copies(x, rng=make_rng(np, 1), **kw)
    assert isinstance(gpu, cp.ndarray) and gpu.shape == cpu.shape and gpu.dtype == cp.float32
    np.testing.assert_array_equal(gpu[0].get(), x)  # copy 0 untouched on both
    noise_gpu, noise_cpu = (gpu[1:] - gpu[:1]).get(), cpu[1:] - cpu[:1]
    assert abs(noise_gpu.std() - noise_cpu.std()) < 0.005
    assert abs(noise_gpu.mean()) < 0.005


def test_noise_clip_bounds_on_gpu() -> None:
    x = cp.zeros((3, 8, 8), cp.float32)
    out = noisy_copies(x, num_samples=8, sigma=5.0, mean=MEAN, std=STD, rng=make_rng(cp, 3))
    lo = (0 - np.array(MEAN)) / np.array(STD)
    hi = (1 - np.array(MEAN)) / np.array(STD)
    host = out.get()
    for c in range(3):
        assert host[1:, c].min() >= lo[c] - 1e-5 and host[1:, c].max() <= hi[c] + 1e-5


def test_seeded_gpu_noise_is_reproducible() -> None:
    x = cp.ones((3, 4, 4), cp.float32)
    a = noisy_copies(x, num_samples=4, sigma=0.2, mean=MEAN, std=STD, rng=make_rng(cp, 9))
    b = noisy_copies(x, num_samples=4, sigma=0.2, mean=MEAN, std=STD, rng=make_rng(cp, 9))
    cp.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [1, 2, 10, 12, 20, 40])
def test_kmeans_labels_match_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    centers = rng.normal(size=(16, 2, 32)) * 3
    x = centers[:, rng.integers(0, 2, size=n)] + rng.normal(size=(16, n, 32)) * 0.1
    cpu = kmeans2(x.astype(np.float32))
    gpu = kmeans2(cp.asarray(x, dtype=cp.float32), backend="xp")
    np.testing.assert_array_equal(cp.asnumpy(gpu.labels), cpu.labels)
    np.testing.assert_allclose(cp.asnumpy(gpu.inertia), cpu.inertia, rtol=1e-6, atol=1e-8)


@pytest.mark.skipif(not cuml_available(), reason="cuML not installed")
def test_cuml_backend_matches_on_separated_clusters() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=(1, 150, 16)), rng.normal(size=(1, 150, 16)) + 8], 1)
    cpu = kmeans2(x)
    gpu = kmeans2(cp.asarray(x), backend="cuml")
    np.testing.assert_array_equal(cp.asnumpy(gpu.labels), cpu.labels)


@pytest.mark.parametrize("requests", [1, 8, 32])  # 10, 80 points: on the host; 320: CuPy
def test_selection_matches_numpy(requests: int) -> None:
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(requests, 10, 24)).astype(np.float32)
    assert (requests * 10 >= GPU_MIN_POINTS) == (requests == 32)
    assert select(cp.asarray(emb)) == select(emb)


def test_small_selections_cluster_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under GPU_MIN_POINTS the k-means gets NumPy arrays even for CuPy input; above, CuPy."""
    import smoothguard.core.aggregate as aggregate

    seen: list[object] = []
    real = aggregate.kmeans2

    def spy(x: object, **kw: object) -> object:
        seen.append(aggregate.array_module(x))
        return real(x, **kw)

    monkeypatch.setattr(aggregate, "kmeans2", spy)
    rng = np.random.default_rng(3)
    select(cp.asarray(rng.normal(size=(1, 10, 24)).astype(np.float32)))
    select(cp.asarray(rng.normal(size=(32, 10, 24)).astype(np.float32)))
    assert seen == [np, cp]
