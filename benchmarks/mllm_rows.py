"""What the default model costs per row: one generate call on 1, 4 and 10 copies of an image.

    python benchmarks/mllm_rows.py --out docs/results/mllm_rows

The floor under every serving ratio: a defended request at N = 10 asks the model for ten rows
where an undefended one asks for one, so defended / undefended latency can be no lower than
this model's own 10-row / 1-row cost, however little the serving adds. Timed in process at one
torch thread (what each served mllm instance runs with) and at two (the in-process pipeline's
setting in benchmarks/serving_bench.py), 8 new tokens, noisy copies of SynthPOPE test images;
each call runs the model as loaded (batch norms folded, channels-last) and the checkpoint's own
modules back to back, so the fold's gain is measured on the same draws.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = REPO_ROOT / "models" / "synthvlm"


def main(argv: list[str] | None = None) -> int:
    import torch

    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.core.noise import make_rng, noisy_copies
    from smoothguard.evaluation.report import write_results
    from smoothguard.synthetic.synthpope import generate_split
    from smoothguard.synthetic.synthpope.questions import pope_prompt

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "mllm_rows")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per setting")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 10], help="rows per call")
    parser.add_argument(
        "--folded-only",
        action="store_true",
        help="time only the model as loaded, not also the checkpoint's unfolded modules",
    )
    args = parser.parse_args(argv)
    if min(args.rows) < 1:
        parser.error("--rows must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    model = VisionLanguageModel.load(MODEL)
    scenes = generate_split("test", 4)
    rows_of = tuple(args.rows)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores, CPU only",
        "command": "python benchmarks/mllm_rows.py " + " ".join(argv or sys.argv[1:]),
        "p50_ms": {},
    }
    forms = {"folded": model}  # as load() gives it (adapters/conv_inference.py)
    if not args.folded_only:
        forms["stored"] = VisionLanguageModel.load(MODEL, fold=False)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for rows in rows_of:
            times: dict[str, list[float]] = {form: [] for form in forms}
            for call in range(args.calls + 1):
                scene = scenes[call % len(scenes)]
                pixels = model.preprocess([scene.image]).numpy()[0]
                copies = noisy_copies(
                    pixels,
                    num_samples=rows,
                    sigma=0.15,
                    mean=model.image_mean,
                    std=model.image_std,
                    rng=make_rng(np, call),
                )
                prompt = pope_prompt(*scene.objects[0])
                for form, vlm in forms.items():  # interleaved: drift hits both alike
                    start = time.perf_counter()
                    vlm.generate(copies, prompt, max_new_tokens=args.max_new_tokens)
                    times[form].append(1000 * (time.perf_counter() - start))
            for form, taken in times.items():
                p50 = float(np.median(taken[1:]))  # the first call warms up
                results["p50_ms"].setdefault(form, {})[f"{threads} thread(s), {rows} row(s)"] = p50
                print(
                    f"{form}: {threads} thread(s), {rows:2d} row(s): p50 {p50:.1f} ms", flush=True
                )
    lines = [
        f"Machine: {results['machine']}. Command: `{results['command']}`",
        "",
        "| model form | torch threads | "
        + " | ".join(f"{r} row(s) p50 ms" for r in rows_of)
        + f" | {rows_of[-1]} / {rows_of[0]} |",
        "|---|---|" + "---|" * (len(rows_of) + 1),
    ]
    for form in forms:
        for threads in (1, 2):
            p50 = [results["p50_ms"][form][f"{threads} thread(s), {r} row(s)"] for r in rows_of]
            cells = " | ".join(f"{v:.1f}" for v in p50)
            lines.append(f"| {form} | {threads} | {cells} | {p50[-1] / p50[0]:.2f}x |")
    write_results(args.out, results, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
