"""On a machine with a GPU: the CuPy steps against their NumPy twins, and the cpu profile's
default models (models/synthvlm, models/synthalm) on CUDA against the CPU, in this process.

    python build/gpu_check.py

Prints timings; exits 2 at once, saying why, where there is no usable GPU. The same models
behind a real tritonserver are build/gpu_smoke.py's (it brings its own server in a bundle).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))

from smoothguard.core.aggregate import GPU_MIN_POINTS, select  # noqa: E402
from smoothguard.core.kmeans import kmeans2  # noqa: E402
from smoothguard.core.noise import make_rng, noisy_copies  # noqa: E402
from smoothguard.core.xp import cuml_available, gpu_available  # noqa: E402

MEAN, STD = (0.481, 0.458, 0.408), (0.269, 0.261, 0.276)


def timed(fn: Callable[[], Any], sync: Callable[[], None], repeat: int = 20) -> float:
    """Median milliseconds of `fn` after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def check_arrays() -> list[str]:
    import cupy as cp

    sync = cp.cuda.get_current_stream().synchronize
    failures = []
    x = np.random.default_rng(0).normal(size=(3, 336, 336)).astype(np.float32)
    xg = cp.asarray(x)
    kw = {"num_samples": 10, "sigma": 0.15, "mean": MEAN, "std": STD}
    gpu = noisy_copies(xg, rng=make_rng(cp, 1), **kw)
    cpu = noisy_copies(x, rng=make_rng(np, 1), **kw)
    if not np.array_equal(gpu[0].get(), cpu[0]):
        failures.append("noise: copy 0 differs between CuPy and NumPy")
    sd_g, sd_c = float((gpu[1:] - gpu[:1]).std()), float((cpu[1:] - cpu[:1]).std())
    if abs(sd_g - sd_c) > 0.01:
        failures.append(f"noise: std {sd_g:.4f} (CuPy) vs {sd_c:.4f} (NumPy)")
    t_c = timed(lambda: noisy_copies(x, rng=make_rng(np, 1), **kw), lambda: None)
    t_g = timed(lambda: noisy_copies(xg, rng=make_rng(cp, 1), **kw), sync)
    print(f"noise N=10 3x336x336: numpy {t_c:.2f} ms  cupy {t_g:.2f} ms")

    rng = np.random.default_rng(2)
    for b, n, d in ((1, 10, 768), (64, 10, 768), (8, 64, 768), (1, 512, 768)):
        centers = rng.normal(size=(b, 2, d))
        emb = (centers[:, rng.integers(0, 2, size=n)] + rng.normal(size=(b, n, d)) * 0.2).astype(
            np.float32
        )
        eg = cp.asarray(emb)
        if not np.array_equal(kmeans2(eg, backend="xp").labels.get(), kmeans2(emb).labels):
            failures.append(f"kmeans B={b} N={n}: CuPy labels differ from NumPy")
        if select(eg) != select(emb):
            failures.append(f"select B={b} N={n}: CuPy selection differs from NumPy")
        t_np = timed(lambda e=emb: kmeans2(e), lambda: None)
        t_cp = timed(lambda e=eg: kmeans2(e, backend="xp"), sync)
        line = f"kmeans B={b} N={n} D={d}: numpy {t_np:.2f} ms  cupy {t_cp:.2f} ms"
        if cuml_available() and n > 12:
            line += f"  cuml {timed(lambda e=eg: kmeans2(e, backend='cuml'), sync, 5):.2f} ms"
        print(line)
    emb = rng.normal(size=(1, 10, 384)).astype(np.float32)  # one served request
    eg = cp.asarray(emb)
    t_np, t_cp = timed(lambda: select(emb), lambda: None), timed(lambda: select(eg), sync)
    print(
        f"select, one request N=10 D=384: numpy {t_np:.2f} ms  cupy input {t_cp:.2f} ms "
        f"(on the host below {GPU_MIN_POINTS} points)"
    )
    if not cuml_available():
        print("cuml: not installed (kmeans uses CuPy only)")
    return failures


def check_models(items: int = 32, num_samples: int = 10) -> list[str]:
    """The cpu profile's default models on CUDA (the mllm steps' `device: gpu`): their answers
    on noisy copies of benchmark inputs against the CPU's, and generate's time on each."""
    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.core import audio
    from smoothguard.synthetic.synthalm.model import AudioLanguageModel
    from smoothguard.synthetic.synthaudio.dataset import load_benchmark
    from smoothguard.synthetic.synthpope import generate_split

    failures = []
    vlm = [VisionLanguageModel.load(REPO_ROOT / "models" / "synthvlm", device=d) for d in DEVICES]
    scenes = generate_split("test", items)
    prompts = [f"Is there a {s.objects[0][0]} {s.objects[0][1]} in the image?" for s in scenes]
    pixels = vlm[0].preprocess([s.image for s in scenes]).numpy()
    kw = {"num_samples": num_samples, "sigma": 0.15, "mean": vlm[0].image_mean}
    copies = [
        noisy_copies(p, std=vlm[0].image_std, rng=make_rng(np, i), **kw)
        for i, p in enumerate(pixels)
    ]
    failures += _compare("synthvlm", vlm, copies, prompts)

    alm = [AudioLanguageModel.load(REPO_ROOT / "models" / "synthalm", device=d) for d in DEVICES]
    clips = load_benchmark("test", items, 0, 0)["pope"]
    waves = alm[0].preprocess([c.waveform for c in clips]).numpy()
    copies = [
        audio.noisy_copies(w, num_samples=num_samples, sigma=0.25, rng=make_rng(np, i))
        for i, w in enumerate(waves)
    ]
    failures += _compare("synthalm", alm, copies, [c.prompt for c in clips])
    return failures


DEVICES = ("cpu", "cuda")


def _compare(name: str, models: list[Any], copies: list[Any], prompts: list[str]) -> list[str]:
    import torch

    cpu, gpu = models
    same = total = 0
    for rows, prompt in zip(copies, prompts, strict=True):
        a = cpu.generate(rows, prompt, max_new_tokens=8)
        b = gpu.generate(rows, prompt, max_new_tokens=8)
        same += sum(x == y for x, y in zip(a, b, strict=True))
        total += len(a)
    print(f"{name} answers, cuda vs cpu: {same}/{total} identical on noisy copies")
    failures = []
    if same < 0.98 * total:  # float32 on another device may flip a near-tie, not more
        failures.append(f"{name}: only {same}/{total} answers on CUDA match the CPU's")
    big = np.concatenate(copies[:16])
    line = []
    for rows in (copies[0][:1], copies[0], big):
        t_c = timed(lambda r=rows: cpu.generate(r, prompts[0], max_new_tokens=8), lambda: None)
        t_g = timed(
            lambda r=rows: gpu.generate(r, prompts[0], max_new_tokens=8), torch.cuda.synchronize
        )
        line.append(f"{len(rows)} rows cpu {t_c:.1f} / cuda {t_g:.1f}")
    print(f"{name} generate (ms): " + "; ".join(line))
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    if not gpu_available():
        print(
            "gpu_check: error: no usable GPU (CuPy missing or no CUDA device visible); "
            "this check only runs on a GPU machine",
            file=sys.stderr,
        )
        return 2
    failures = check_arrays()
    failures += check_models()
    for failure in failures:
        print(f"gpu_check: FAIL {failure}", file=sys.stderr)
    print("gpu_check: ok" if not failures else f"gpu_check: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
