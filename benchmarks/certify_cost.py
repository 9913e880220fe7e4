"""What a certified answer costs when served: p50 / p95 at concurrency 1 of a CERTIFY request
against a default defended request (N = 10) and a bare model call, on one server, alternating
call by call, with the MLLM rows each request asks counted from Triton's own statistics.

Why: certified mode answers with 1 + n0 + n model rows (111 with the shipped settings) instead
of N; users choosing it need the price in milliseconds, not only in rows.

    python benchmarks/certify_cost.py --out docs/results/certify_cost [--calls 20]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "build"))

from render import render  # noqa: E402
from smoothguard.evaluation.report import write_results  # noqa: E402
from smoothguard.serving.server import ServerPorts, TritonServer  # noqa: E402
from smoothguard.synthetic.synthpope import generate_split  # noqa: E402
from smoothguard.synthetic.synthpope.questions import pope_prompt  # noqa: E402
from smoothguard_client import SmoothGuardClient  # noqa: E402

SIGMA = 0.25  # pixel units, the certified evaluation's default


def mllm_rows(client: grpcclient.InferenceServerClient) -> int:
    """Rows the mllm model has run so far (Triton's inference_count)."""
    stats = client.get_inference_statistics("mllm", as_json=True)
    return sum(int(m.get("inference_count", 0)) for m in stats["model_stats"])


def kinds(
    guard: SmoothGuardClient, bare: grpcclient.InferenceServerClient, image: np.ndarray, prompt: str
) -> dict[str, Callable[[], Any]]:
    inputs = [grpcclient.InferInput("IMAGE", [1, *image.shape], "UINT8")]
    inputs[0].set_data_from_numpy(image[None])
    text = grpcclient.InferInput("PROMPT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[prompt.encode()]], np.object_))
    inputs.append(text)
    return {
        "bare model (mllm)": lambda: bare.infer("mllm", inputs),
        "defended, N = 10": lambda: guard.ask(image, prompt, sigma=SIGMA),
        "certified (CERTIFY=true)": lambda: guard.ask(image, prompt, sigma=SIGMA, certify=True),
    }


def measure(url: str, calls: int) -> list[dict[str, Any]]:
    scene = generate_split("test", 1)[0]
    prompt = pope_prompt(*scene.objects[0])
    bare = grpcclient.InferenceServerClient(url)  # the bare calls and Triton's statistics
    with SmoothGuardClient(url, timeout_s=300) as guard:
        runs = kinds(guard, bare, scene.image, prompt)
        times: dict[str, list[float]] = {name: [] for name in runs}
        rows: dict[str, int] = dict.fromkeys(runs, 0)
        for run in runs.values():  # warm
            run()
        for i in range(calls):
            order = list(runs.items())
            for name, run in order if i % 2 else order[::-1]:
                before = mllm_rows(bare)
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
                rows[name] += mllm_rows(bare) - before
    return [
        {
            "request": name,
            "calls": calls,
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p95_ms": round(float(np.percentile(values, 95)) * 1000, 1),
            "mllm_rows_per_request": round(rows[name] / calls, 1),
        }
        for name, values in times.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "certify_cost")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per kind")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="certify-cost-"))
    repo = render("cpu", work / "repo", ["overlays=[]", "defense.noise_unit=pixel"])
    with TritonServer(repo, ports=ServerPorts.free(), work_dir=work / "server") as server:
        rows = measure(f"127.0.0.1:{server.ports.grpc}", args.calls)
    result = {
        "command": "python benchmarks/certify_cost.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, CPU only",
        "sigma_pixel": SIGMA,
        "rows": rows,
    }
    lines = [
        f"`{result['command']}` ({result['machine']}; cpu profile, pixel sigma {SIGMA}, one "
        "SynthPOPE yes/no question, concurrency 1, kinds alternating call by call)",
        "",
        "| request | p50 ms | p95 ms | mllm rows per request |",
        "|---|---|---|---|",
        *(
            f"| {r['request']} | {r['p50_ms']} | {r['p95_ms']} | {r['mllm_rows_per_request']} |"
            for r in rows
        ),
    ]
    write_results(args.out, result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
