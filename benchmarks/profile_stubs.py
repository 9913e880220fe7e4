"""Where the served defense's own steps spend their CPU: py-spy on the stubs under load.

    python benchmarks/profile_stubs.py --out docs/results/stub_profile

Starts the real server (cpu profile), drives `smoothguard` with perf_analyzer at one
concurrency (adaptive sampling by default, the usual traffic of a cost-conscious deployment),
samples every instance of the noise, generate and aggregate stubs with py-spy (on-CPU samples
only), and writes the share of each step's samples spent in (inclusive of) the functions that
matter: results.json and results.md. What in-process code does not pay for (tensor conversion,
metrics, tickets, JSON options, the event loop of async BLS) shows here.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "build"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from render import render  # noqa: E402
from smoothguard.serving.server import (  # noqa: E402
    ServerPorts,
    TritonServer,
    perf_analyzer_binary,
    perf_analyzer_environment,
)

STEPS = ("noise", "generate", "aggregate")
# Function name (as py-spy prints it) -> what it is, per step; inclusive shares.
WATCH: dict[str, dict[str, str]] = {
    "noise": {
        "noisy_copies": "Gaussian draw and clipping",
        "ImagePreprocessor.__call__": "preprocessing the clean image",
        "image_from_inputs": "decoding and checking the image",
        "request_options": "reading the option inputs",
        "EnsembleTickets.issue": "OPTIONS JSON and its ticket (HMAC)",
        "output_tensor": "output tensors",
    },
    "generate": {
        "MllmFanout.ask": "BLS calls to mllm (request building, answers)",
        "step_options": "parsing OPTIONS",
        "_pixel_check.<locals>.check": "checking the copies' values",
        "BaseEventLoop._run_once": "asyncio event loop (BLS futures)",
        "_worker": "the BLS executor threads",
    },
    "aggregate": {
        "select_one": "k-means and the choice",
        "DefenseMetrics.record": "Prometheus metrics (one IPC call per update)",
        "EnsembleTickets.verify": "checking the ticket (HMAC)",
        "step_options": "parsing OPTIONS",
        "decode_texts": "decoding the candidates",
        "check_embeddings": "checking the embeddings",
        "bytes_tensor": "string output tensors",
    },
}


def summarize(raw_files: list[Path], watch: dict[str, str]) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> total samples and inclusive share per watched name."""
    total, hits = 0, collections.Counter[str]()
    for path in raw_files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            names = {frame.split(" (")[0] for frame in stack.split(";")}
            for name in watch:
                if name in names:
                    hits[name] += n
    shares = {f"{watch[n]} ({n})": round(hits[n] / total, 4) if total else 0.0 for n in watch}
    return {"samples": total, "shares": shares}


def main(argv: list[str] | None = None) -> int:
    from smoothguard.serving.watchdog import live_stubs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "stub_profile")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--full-n", action="store_true", help="all N copies, not adaptive")
    args = parser.parse_args(argv)
    import serving_bench

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    repo = render("cpu", out / "repo", ["overlays=[]"])
    data = serving_bench.perf_input_file(
        out / "input.json", serving_bench.workload(16), "smoothguard", 10, 8, not args.full_n
    )
    ports = ServerPorts.free()
    with TritonServer(repo, ports=ports, work_dir=out / "server") as server:
        command = [str(perf_analyzer_binary()), "-m", "smoothguard", "-i", "grpc"]
        command += ["-u", f"127.0.0.1:{ports.grpc}", "--input-data", str(data)]
        command += ["--concurrency-range", str(args.concurrency), "--max-trials", "1"]
        command += ["--measurement-interval", str(1000 * (args.seconds + 20))]
        load = subprocess.Popen(
            command,
            env=perf_analyzer_environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(8)  # past the warm-up
            spy_command = [str(Path(sys.executable).with_name("py-spy"))]
            spies = []
            for pid, model in live_stubs(server.process.pid).items():
                if model in STEPS:
                    raw = out / f"{model}_{pid}.txt"
                    record = ["record", "--pid", str(pid), "--format", "raw", "-o", str(raw)]
                    record += ["--rate", "200", "--duration", str(args.seconds), "--nonblocking"]
                    spies.append(
                        subprocess.Popen(
                            [*spy_command, *record],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            for spy in spies:
                spy.wait()
        finally:
            load.kill()
            load.wait()
    results = {
        "command": "python benchmarks/profile_stubs.py " + " ".join(argv or sys.argv[1:]),
        "traffic": f"smoothguard, N=10, {'full N' if args.full_n else 'adaptive'}, "
        f"concurrency {args.concurrency}, {args.seconds} s sampled",
        "steps": {
            step: summarize(sorted(out.glob(f"{step}_*.txt")), WATCH[step]) for step in STEPS
        },
    }
    lines = [f"Command: `{results['command']}` ({results['traffic']}).", ""]
    for step, found in results["steps"].items():
        lines += [
            f"**{step}** ({found['samples']} on-CPU samples, all instances): share of samples "
            "in each part (inclusive):",
            "",
            "| part | share |",
            "|---|---|",
        ]
        lines += [f"| {name} | {100 * share:.1f}% |" for name, share in found["shares"].items()]
        lines.append("")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if all(found["samples"] > 0 for found in results["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
