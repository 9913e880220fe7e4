"""What serving each paper family costs here: the tiny LLaVA-1.5 and Qwen2.5-VL checkpoints
(build/make_checkpoints.py) beside the shipped SynthVLM, each served alone by a real
tritonserver (cpu profile, images only), p50 at concurrency 1 and the mllm stubs' memory.

Why: docs/models.md tells users what changes with the family (image tokens per copy, the
patch sequence); these are the figures for that, on models whose widths are tiny, so they
measure the path (tokens, vision geometry, patching), not a 7B model's arithmetic.

    python benchmarks/families.py --out docs/results/families [--calls 30]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tritonclient.grpc as grpcclient

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "build"))

from render import render  # noqa: E402
from smoothguard.evaluation.report import write_results  # noqa: E402
from smoothguard.serving.server import ServerPorts, TritonServer  # noqa: E402
from smoothguard.serving.watchdog import live_stubs  # noqa: E402
from smoothguard.synthetic.families import FAMILIES, SERVE_IMAGE_SIZE, build_checkpoint  # noqa: E402
from smoothguard.synthetic.synthpope import generate_split  # noqa: E402

PROMPT = b"Describe the image."
TOKENS = 8  # every model answers this many tokens at most (random ones never stop early)
SAMPLES = 10


def _tensor(name: str, array: np.ndarray, wire: str) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(array.shape), wire)
    item.set_data_from_numpy(array)
    return item


def _inputs(model: str, image: np.ndarray) -> list[grpcclient.InferInput]:
    tokens = np.array([[TOKENS]] if model == "mllm" else [TOKENS], np.int32)
    if model == "mllm":
        return [
            _tensor("IMAGE", image[None], "UINT8"),
            _tensor("PROMPT", np.array([[PROMPT]], np.object_), "BYTES"),
            _tensor("MAX_NEW_TOKENS", tokens, "INT32"),
        ]
    return [
        _tensor("IMAGE", image, "UINT8"),
        _tensor("PROMPT", np.array([PROMPT], np.object_), "BYTES"),
        _tensor("NUM_SAMPLES", np.array([SAMPLES], np.int32), "INT32"),
        _tensor("MAX_NEW_TOKENS", tokens, "INT32"),
    ]


def _image_tokens(path: Path, image_size: int | None) -> tuple[int, list[int]]:
    from smoothguard.adapters.mllm import VisionLanguageModel

    vlm = VisionLanguageModel.load(path, image_size=image_size)
    ids = vlm.prompt_ids(PROMPT.decode())
    image_id = max(set(ids), key=ids.count)  # the placeholder is the most repeated id
    return ids.count(image_id), list(vlm.image_size)


def measure(name: str, path: Path, image_size: int | None, calls: int, work: Path) -> dict:
    overrides = ["overlays=[]", f"mllm.model_path={path}", f"mllm.image_size={image_size or 0}"]
    repo = render("cpu", work / name / "repo", overrides)
    image = generate_split("test", 1)[0].image
    row: dict[str, Any] = {"model": name, "calls": calls}
    row["image_tokens"], row["input_resolution"] = _image_tokens(path, image_size)
    weights = path / "model.safetensors"
    row["weights_mib"] = round(weights.stat().st_size / 2**20, 2)
    row["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    started = time.perf_counter()
    with TritonServer(repo, ports=ServerPorts.free(), work_dir=work / name / "server") as server:
        row["server_ready_s"] = round(time.perf_counter() - started, 1)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports.grpc}")
        for model in ("mllm", "smoothguard"):
            for _ in range(3):  # warm
                client.infer(model, _inputs(model, image))
            times = []
            for _ in range(calls):
                begin = time.perf_counter()
                client.infer(model, _inputs(model, image))
                times.append(time.perf_counter() - begin)
            row[f"{model}_p50_ms"] = round(statistics.median(times) * 1000, 1)
            row[f"{model}_p95_ms"] = round(float(np.percentile(times, 95)) * 1000, 1)
        stubs = [p for p, m in live_stubs(server.process.pid).items() if m == "mllm"]
        row["mllm_stub_rss_mib"] = round(
            sum(psutil.Process(p).memory_info().rss for p in stubs) / 2**20 / len(stubs), 1
        )
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "families")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per model")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="families-"))
    models = [("synthvlm", REPO_ROOT / "models" / "synthvlm", None)]
    models += [
        (f, build_checkpoint(f, work / "checkpoints" / f), SERVE_IMAGE_SIZE[f]) for f in FAMILIES
    ]
    rows = [measure(name, path, size, args.calls, work) for name, path, size in models]
    result = {
        "command": "python benchmarks/families.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, CPU only",
        "max_new_tokens": TOKENS,
        "num_samples": SAMPLES,
        "rows": rows,
    }
    lines = [
        f"`{result['command']}` ({result['machine']}; smoothguard N = {SAMPLES}, every answer "
        f"at most {TOKENS} new tokens, concurrency 1, {args.calls} timed calls each)",
        "",
        "| model | input | image tokens | weights MiB | mllm p50 / p95 ms | smoothguard p50 / "
        "p95 ms | mllm stub RSS MiB | server ready s |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['model']} | {r['input_resolution'][0]}x{r['input_resolution'][1]} | "
            f"{r['image_tokens']} | {r['weights_mib']} | {r['mllm_p50_ms']} / {r['mllm_p95_ms']}"
            f" | {r['smoothguard_p50_ms']} / {r['smoothguard_p95_ms']} | "
            f"{r['mllm_stub_rss_mib']} | {r['server_ready_s']} |"
            for r in rows
        ),
    ]
    write_results(args.out, result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
