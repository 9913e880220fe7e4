"""Load and soak test of the `smoothguard` endpoint: sustained concurrency, zero failures,
bounded memory.

    python benchmarks/soak.py --out var/soak                 # 10 minutes (make soak)
    python benchmarks/soak.py --ci --out var/soak-ci         # about 1 minute
    python benchmarks/soak.py --url H:P --metrics-url URL --server-pid PID   # a running server

perf_analyzer (tritonclient wheel) drives `smoothguard` over gRPC at concurrency 16 with a mix
of good requests: SynthPOPE images, presence questions and "Describe the image.", N in
{2, 4, 6, 10} and sigma in {0.05, 0.1, 0.15, 0.2}. A short warm-up comes first; then the
resident memory of tritonserver and all its Python backend stubs is the baseline, and the
sustained run lasts --duration seconds. Checks: perf_analyzer saw no error, Triton's own
failure counter for smoothguard did not move, and RSS after the run is within
--max-rss-growth of the baseline. Writes soak.json and soak.md; exit 1 when a check fails.
Requests go only to the local server, and every phase ends by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "build"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import perf  # noqa: E402
from serving_bench import perf_input_file, workload  # noqa: E402

from render import render  # noqa: E402
from smoothguard.serving.server import ServerPorts, TritonServer  # noqa: E402

NUM_SAMPLES = (2, 4, 6, 10)
SIGMAS = (0.05, 0.1, 0.15, 0.2)
MODEL = "smoothguard"


def mixed_input_file(path: Path, items: int, max_new_tokens: int) -> Path:
    """serving_bench's perf_analyzer input, with N, sigma and the prompt varied per row."""
    perf_input_file(path, workload(items), MODEL, NUM_SAMPLES[0], max_new_tokens)
    data = json.loads(path.read_text())
    for index, row in enumerate(data["data"]):
        row["NUM_SAMPLES"] = [NUM_SAMPLES[index % len(NUM_SAMPLES)]]
        row["SIGMA"] = [SIGMAS[(index // len(NUM_SAMPLES)) % len(SIGMAS)]]
        if index % 3 == 2:
            row["PROMPT"] = ["Describe the image."]
    path.write_text(json.dumps(data))
    return path


def server_rss_bytes(pid: int) -> int:
    """tritonserver plus every child (the Python backend stubs), resident set in bytes."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            total += proc.memory_info().rss
    return total


def request_counts(metrics_url: str) -> dict[str, float]:
    """Triton's success and failure counters for smoothguard (all failure reasons summed)."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    counts = {"success": 0.0, "failure": 0.0}
    pattern = re.compile(r"^nv_inference_request_(success|failure)\{([^}]*)\} (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match and f'model="{MODEL}"' in match.group(2):
            counts[match.group(1)] += float(match.group(3))
    return counts


def perf_analyzer(url: str, data: Path, concurrency: int, out: Path, **mode: Any) -> dict:
    """One perf_analyzer run; `mode` is request_count=N or window_ms=W (three windows)."""
    name = "warmup" if "request_count" in mode else "soak"
    export = out / f"perf_{name}_export.json"
    options = ["--profile-export-file", str(export)]
    if "request_count" in mode:
        options += ["--request-count", str(mode["request_count"])]
        limit = 900.0
    else:
        window = int(mode["window_ms"])
        # Three windows and a stability bound nothing can miss: it runs 3 x window, then stops.
        options += ["--measurement-mode", "time_windows", "--measurement-interval", str(window)]
        options += ["--max-trials", "3", "--stability-percentage", "999"]
        limit = 3 * window / 1000 + 600
    done = perf.run(MODEL, url, data, concurrency, out / f"perf_{name}.csv", options, limit)
    row: dict[str, Any] = {"returncode": done.returncode, "wall_s": done.wall_s}
    row.update(done.stats or {})
    row.update(perf.export_summary(export))
    if done.returncode != 0:
        row["error"] = (done.stderr or done.stdout)[-2000:]
    return row


class RssSampler(threading.Thread):
    """Samples server RSS every few seconds, so a leak shows as a trend, not one number."""

    def __init__(self, pid: int, every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, int]] = []
        self.stop_event = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(psutil.Error):
                rss = server_rss_bytes(self.pid)
                self.samples.append((round(time.monotonic() - self.started_at, 1), rss))
            self.stop_event.wait(self.every_s)


def soak(
    url: str, metrics_url: str, pid: int, out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    data = mixed_input_file(out / "input_soak.json", args.items, args.max_new_tokens)
    before_warmup = request_counts(metrics_url)
    warmup = perf_analyzer(url, data, args.concurrency, out, request_count=args.warmup_requests)
    time.sleep(2)  # let the last responses' buffers be freed before the baseline
    baseline = server_rss_bytes(pid)
    before = request_counts(metrics_url)
    sampler = RssSampler(pid)
    sampler.start()
    run = perf_analyzer(url, data, args.concurrency, out, window_ms=args.duration * 1000 / 3)
    sampler.stop_event.set()
    sampler.join()
    time.sleep(2)
    final = server_rss_bytes(pid)
    after = request_counts(metrics_url)
    served = after["success"] - before["success"]
    failed = after["failure"] - before["failure"]
    growth = (final - baseline) / baseline
    checks = {
        "perf_analyzer_ok": warmup["returncode"] == 0 and run["returncode"] == 0,
        "zero_failed_requests": failed == 0 and after["failure"] - before_warmup["failure"] == 0,
        "requests_served": served > 0,
        "rss_growth_below_limit": growth < args.max_rss_growth,
    }
    return {
        "command": "python benchmarks/soak.py " + " ".join(args.argv),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "mix": {
            "num_samples": NUM_SAMPLES,
            "sigma": SIGMAS,
            "items": args.items,
            "max_new_tokens": args.max_new_tokens,
        },
        "warmup": warmup,
        "run": run,
        "served": served,
        "failed": failed,
        "warmup_served": before["success"] - before_warmup["success"],
        "rss_baseline_mib": baseline / 2**20,
        "rss_final_mib": final / 2**20,
        "rss_max_mib": max([s[1] for s in sampler.samples] + [final]) / 2**20,
        "rss_growth": growth,
        "rss_samples": [(t, round(r / 2**20, 1)) for t, r in sampler.samples],
        "max_rss_growth": args.max_rss_growth,
        "checks": checks,
        "passed": all(checks.values()),
    }


def markdown(result: dict[str, Any]) -> str:
    run = result["run"]
    lines = [
        f"# Soak: smoothguard at concurrency {result['concurrency']} for "
        f"{result['duration_s']:.0f} s",
        "",
        f"Command: `{result['command']}`",
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests served (after warm-up) | {result['served']:.0f} |",
        f"| failed requests | {result['failed']:.0f} |",
        f"| throughput | {run.get('throughput_rps', float('nan')):.2f} req/s |",
        f"| latency p50 / p95 / p99 | {run.get('p50_ms', float('nan')):.0f} / "
        f"{run.get('p95_ms', float('nan')):.0f} / {run.get('p99_ms', float('nan')):.0f} ms |",
        f"| latency max | {run.get('latency_max_ms', float('nan')):.0f} ms |",
        f"| server RSS after warm-up | {result['rss_baseline_mib']:.0f} MiB |",
        f"| server RSS after the run | {result['rss_final_mib']:.0f} MiB "
        f"({100 * result['rss_growth']:+.1f}%, limit {100 * result['max_rss_growth']:.0f}%) |",
        f"| server RSS peak during the run | {result['rss_max_mib']:.0f} MiB |",
        "",
        "Checks: "
        + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in result["checks"].items()),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "soak")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--ci", action="store_true", help="short run: --duration 60")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--items", type=int, default=16, help="distinct SynthPOPE images")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--warmup-requests", type=int, default=32)
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one)")
    parser.add_argument("--metrics-url", help="its metrics URL, with --url")
    parser.add_argument("--server-pid", type=int, help="its tritonserver pid, with --url")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.ci:
        args.duration = 60.0
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.url:
        if not (args.metrics_url and args.server_pid):
            parser.error("--url needs --metrics-url and --server-pid")
        result = soak(args.url, args.metrics_url, args.server_pid, out, args)
    else:
        repo = render("cpu", out / "repo", args.overrides)
        ports = ServerPorts.free()
        with TritonServer(repo, ports=ports, work_dir=out / "server") as server:
            assert server.process is not None
            result = soak(
                f"127.0.0.1:{ports.grpc}",
                f"http://127.0.0.1:{ports.metrics}/metrics",
                server.process.pid,
                out,
                args,
            )
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    (out / "soak.md").write_text(markdown(result))
    print((out / "soak.md").read_text())
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
