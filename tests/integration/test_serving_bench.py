"""`make bench` in miniature: the serving benchmark starts its own server, measures the three
series with perf_analyzer and writes every result file, with the model calls counted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_serving_bench_writes_every_series(
    tmp_path: Path, benchmark_script: Callable[[str], ModuleType]
) -> None:
    bench = benchmark_script("serving_bench")
    argv = ["--out", str(tmp_path), "--concurrency", "1", "--requests", "4", "--items", "2"]
    argv += ["--rounds", "2"]
    assert bench.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["perf"]) == ["mllm", "smoothguard", "smoothguard adaptive"]
    for rows in results["perf"].values():
        (row,) = rows
        assert row["throughput_rps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    full, adaptive = results["summary"]["smoothguard"], results["summary"]["smoothguard adaptive"]
    # Triton's own counts: every defended request asks all 10 copies; adaptive asks its first
    # round (4) and all 10 only on disagreement.
    assert full["model_calls"] == pytest.approx(10.0)
    assert 4.0 <= adaptive["model_calls"] <= 10.0
    # The c=1 ratios: the median of the paired rounds (of two, their mean), the spread beside.
    rounds = results["rounds"]
    assert len(rounds) == 2 and all(r["adaptive_p50_ms"] > 0 for r in rounds)
    overheads = [r["served_p50_ms"]["smoothguard"] / r["defended_p50_ms"] for r in rounds]
    assert full["serving_overhead"] == pytest.approx(sum(overheads) / 2)
    assert full["serving_overhead_range"] == [min(overheads), max(overheads)]
    latency = [
        r["served_p50_ms"]["smoothguard adaptive"] / r["served_p50_ms"]["mllm"] for r in rounds
    ]
    assert adaptive["p50_ratio_c1"] == pytest.approx(sum(latency) / 2)
    assert results["perf"]["smoothguard"][0]["p50_ms"] == rounds[0]["served_p50_ms"]["smoothguard"]
    # One concurrency is both the first and the last: the same rounds give the saturation ratio.
    assert results["saturation"] == {"concurrency": 1, "rounds": rounds}
    rps = [r["throughput_rps"]["smoothguard"] / r["throughput_rps"]["mllm"] for r in rounds]
    assert full["throughput_ratio"] == pytest.approx(sum(rps) / 2)
    # CPU per request by process: the bare model costs the mllm stubs and Triton (idle stubs
    # tick a little: Triton checks on them); a defended request costs every step.
    bare = results["perf"]["mllm"][0]["cpu_ms_per_request"]
    defended = results["perf"]["smoothguard"][0]["cpu_ms_per_request"]
    steps = ("noise", "generate", "embedder", "aggregate")
    assert max(bare.get(step, 0.0) for step in steps) < bare["mllm"] / 10, bare
    assert {"tritonserver", "noise", "generate", "mllm", "embedder", "aggregate"} <= set(defended)
    assert defended["mllm"] > bare["mllm"]
    markdown = (tmp_path / "results.md").read_text()
    assert "smoothguard adaptive" in markdown and "serving overhead" in markdown
    assert "median of 2 paired rounds" in markdown and "saturation (concurrency 1)" in markdown
    assert "CPU time per request at concurrency 1" in markdown
    assert (tmp_path / "latency_vs_throughput.png").stat().st_size > 10_000
