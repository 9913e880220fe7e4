"""What the noise step costs in process, and the alternatives measured for it.

    python benchmarks/noise_step.py --out docs/results/noise_step

Times, one thread each, the parts of a defended request's first step: the clean image's
preprocessing (transformers' processor vs smoothguard.adapters.table_preprocess, equal tensors)
and the Gaussian draw for the noisy copies (numpy's float32 ziggurat, which the defense uses,
against the faster draws one could switch to: other numpy bit generators, a vectorised
Box-Muller, torch.randn). Writes results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SYNTHVLM = REPO_ROOT / "models" / "synthvlm"


def per_call_ms(fn: Callable[[], Any], *, seconds: float = 1.0) -> float:
    """Median of five timed runs, each repeating `fn` for about seconds / 5."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.05:
        fn()
        calls += 1
    reps = max(1, int(calls * seconds / 5 / 0.05))
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        runs.append((time.perf_counter() - start) / reps * 1000)
    return float(np.median(runs))


def box_muller(rng: np.random.Generator, out: np.ndarray) -> None:
    """float32 Box-Muller: two uniforms per pair of normals (tails end at about 5.8 sigma)."""
    flat = out.reshape(-1)
    half = flat.size // 2
    u1 = rng.random(half, dtype=np.float32)
    u2 = rng.random(half, dtype=np.float32)
    radius = np.sqrt(-2.0 * np.log1p(-u1))
    angle = np.float32(2 * np.pi) * u2
    np.multiply(radius, np.cos(angle), out=flat[:half])
    np.multiply(radius, np.sin(angle), out=flat[half : 2 * half])


def draws(size: int) -> dict[str, float]:
    out = np.empty((9, 3, size, size), np.float32)
    found: dict[str, float] = {}
    for name in ("PCG64", "SFC64", "Philox"):
        rng = np.random.Generator(getattr(np.random, name)(1))
        label = f"numpy {name} standard_normal float32" + (" (used)" if name == "PCG64" else "")
        found[label] = per_call_ms(lambda rng=rng: rng.standard_normal(dtype=np.float32, out=out))
    rng = np.random.Generator(np.random.PCG64(1))
    found["numpy Box-Muller float32"] = per_call_ms(lambda: box_muller(rng, out))
    try:
        import torch
    except ImportError:
        return found
    torch.set_num_threads(1)
    tensor = torch.empty(out.shape)
    found["torch normal_ (Box-Muller, vectorised)"] = per_call_ms(lambda: tensor.normal_())
    return found


def preprocessing(model_path: Path, sizes: list[int]) -> dict[str, dict[str, float]]:
    from transformers import AutoImageProcessor

    from smoothguard.adapters.table_preprocess import TableImageProcessor

    table = TableImageProcessor.from_config(model_path)
    if table is None:
        raise SystemExit(f"{model_path}: not a plain CLIP processor")
    hf = AutoImageProcessor.from_pretrained(str(model_path), backend="pil")
    rng = np.random.default_rng(0)
    found = {}
    for size in sizes:
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)

        def run_hf(image: np.ndarray = image) -> Any:
            return hf(images=[image], return_tensors="np", input_data_format="channels_last")

        found[f"{size}x{size} input"] = {
            "transformers": per_call_ms(run_hf),
            "table": per_call_ms(lambda image=image: table([image])),
        }
    return found


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}. Command: `{results['command']}`",
        "",
        "Gaussian draw for nine noisy copies (ms, one thread, median of five runs):",
        "",
        "| draw | " + " | ".join(f"{s}x{s}" for s in results["draw_sizes"]) + " |",
        "|---|" + "---|" * len(results["draw_sizes"]),
    ]
    names = list(next(iter(results["draws"].values())))
    for name in names:
        cells = " | ".join(f"{results['draws'][str(s)][name]:.3f}" for s in results["draw_sizes"])
        lines.append(f"| {name} | {cells} |")
    for model, rows in results["preprocessing"].items():
        lines += [
            "",
            f"Preprocessing one image for {model} (ms):",
            "",
            "| input | transformers | table |",
            "|---|---|---|",
        ]
        for label, row in rows.items():
            lines.append(f"| {label} | {row['transformers']:.3f} | {row['table']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "noise_step")
    parser.add_argument("--llava-checkpoint", type=Path, default=None, help="a 336-px CLIP one")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = [64, 336]
    results: dict[str, Any] = {
        "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores, CPU only",
        "command": "python benchmarks/noise_step.py " + " ".join(argv or sys.argv[1:]),
        "draw_sizes": sizes,
        "draws": {str(s): draws(s) for s in sizes},
        "preprocessing": {"SynthVLM (resize to 64x64)": preprocessing(SYNTHVLM, [64, 128, 256])},
    }
    if args.llava_checkpoint is not None:
        results["preprocessing"]["LLaVA-1.5 processor (shortest edge 336, crop 336)"] = (
            preprocessing(args.llava_checkpoint, [128, 336, 640])
        )
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
