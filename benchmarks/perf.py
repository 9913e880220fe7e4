"""perf_analyzer, driven one way for every benchmark: the command, the run and its log, and the
figures read back from its CSV and its per-request export (serving_bench.py, soak.py)."""

from __future__ import annotations

import csv
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothguard.serving.server import perf_analyzer_binary, perf_analyzer_environment

PERCENTILES = ("p50", "p90", "p95", "p99")


@dataclass(frozen=True)
class PerfRun:
    """How one perf_analyzer process ended, and its CSV row's figures when it wrote one."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    stats: dict[str, float] | None


def run(
    model: str,
    url: str,
    data: Path,
    concurrency: int,
    csv_path: Path,
    options: list[str],
    timeout_s: float,
) -> PerfRun:
    """One perf_analyzer run of `model` over gRPC at one concurrency; `options` choose how it
    measures. Its output is kept beside the CSV (.log), for when a number looks wrong."""
    csv_path.unlink(missing_ok=True)  # a failed run must not be read as the previous one
    command = [
        perf_analyzer_binary(), "-m", model, "-i", "grpc", "-u", url, "--input-data", str(data),
        "--concurrency-range", str(concurrency), "-f", str(csv_path), "--percentile", "50",
        *options,
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        command, env=perf_analyzer_environment(), capture_output=True, text=True, timeout=timeout_s
    )
    wall_s = time.monotonic() - started
    csv_path.with_suffix(".log").write_text(done.stdout + done.stderr)
    return PerfRun(done.returncode, done.stdout, done.stderr, wall_s, read_stats(csv_path))


def read_stats(csv_path: Path) -> dict[str, float] | None:
    """Throughput (requests/s) and latency percentiles (ms) from perf_analyzer's CSV, which
    gives microseconds; None when it wrote no row."""
    if not csv_path.exists():
        return None
    with csv_path.open() as handle:
        row = next(csv.DictReader(handle), None)
    if row is None:
        return None
    stats = {"throughput_rps": float(row["Inferences/Second"])}
    for p in PERCENTILES:
        stats[f"{p}_ms"] = float(row[f"{p} latency"]) / 1000
    return stats


def export_summary(path: Path) -> dict[str, Any]:
    """Request count and latency spread from perf_analyzer's per-request export: the CSV has
    percentiles only, and a soak must see its slowest request."""
    if not path.exists():
        return {}
    latencies = []
    for experiment in json.loads(path.read_text()).get("experiments", []):
        for request in experiment.get("requests", []):
            responses = request.get("response_timestamps") or []
            if responses:
                latencies.append((responses[-1] - request["timestamp"]) / 1e6)
    if not latencies:
        return {"requests": 0}
    latencies.sort()
    return {
        "requests": len(latencies),
        "latency_min_ms": latencies[0],
        "latency_max_ms": latencies[-1],
    }
