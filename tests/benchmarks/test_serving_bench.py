"""The serving benchmark's perf_analyzer driver: an unsettled window is measured again, longer,
instead of losing the run; any other failure still stops it with perf_analyzer's words."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

# Stands in for perf_analyzer's binary: records its arguments, then answers as the real one
# does when its windows never settle (`unstable` times) or with a CSV row.
FAKE = """\
import json, sys
from pathlib import Path
calls = Path(sys.argv[0]).with_suffix(".calls")
seen = json.loads(calls.read_text()) if calls.exists() else []
seen.append(sys.argv[1:])
calls.write_text(json.dumps(seen))
if len(seen) <= {unstable}:
    print("Failed to obtain stable measurement within 6 measurement windows for concurrency 4.")
    sys.exit(1)
if {broken}:
    print("error: failed to create concurrency manager", file=sys.stderr)
    sys.exit(1)
csv = Path(sys.argv[sys.argv.index("-f") + 1])
csv.write_text("Concurrency,Inferences/Second,p50 latency,p90 latency,p95 latency,p99 latency\\n"
               "4,50.5,20000,30000,35000,40000\\n")
"""


@pytest.fixture
def bench(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_script("serving_bench")


def fake_binary(tmp_path: Path, unstable: int, broken: bool = False) -> Path:
    script = tmp_path / "perf_analyzer.py"
    script.write_text(FAKE.format(unstable=unstable, broken=broken))
    launcher = tmp_path / "perf_analyzer"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    launcher.chmod(0o755)
    return script


def windows(script: Path) -> list[int]:
    calls = json.loads(script.with_suffix(".calls").read_text())
    return [int(c[c.index("--measurement-request-count") + 1]) for c in calls]


def run(bench: ModuleType, tmp_path: Path) -> dict[str, float]:
    return bench.run_perf_analyzer("smoothguard", "x:1", tmp_path, 4, 120, tmp_path, "sg")


def test_an_unsettled_window_is_measured_again_twice_as_long(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = fake_binary(tmp_path, unstable=1)
    monkeypatch.setattr(bench.perf, "perf_analyzer_binary", lambda: str(tmp_path / "perf_analyzer"))
    row = run(bench, tmp_path)
    assert windows(script) == [120, 240]
    assert row["window_requests"] == 240 and row["throughput_rps"] == 50.5
    assert (row["p50_ms"], row["p99_ms"]) == (20.0, 40.0)


def test_a_window_that_never_settles_stops_the_run(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = fake_binary(tmp_path, unstable=2)
    monkeypatch.setattr(bench.perf, "perf_analyzer_binary", lambda: str(tmp_path / "perf_analyzer"))
    with pytest.raises(RuntimeError, match="perf_analyzer failed for sg c=4"):
        run(bench, tmp_path)
    assert windows(script) == [120, 240]


def test_other_failures_are_not_retried(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = fake_binary(tmp_path, unstable=0, broken=True)
    monkeypatch.setattr(bench.perf, "perf_analyzer_binary", lambda: str(tmp_path / "perf_analyzer"))
    with pytest.raises(RuntimeError, match="failed to create concurrency manager"):
        run(bench, tmp_path)
    assert windows(script) == [120]


def test_ratios_are_the_median_paired_round(bench: ModuleType) -> None:
    """Each round's figures are divided by that same round's bare model (or in-process
    pipeline), and the summary takes the median round: one slow minute moves the spread, not
    the figure."""
    perf = {
        "mllm": [{"model_calls": 1.0}],
        "smoothguard": [{"model_calls": 10.0}],
        "smoothguard adaptive": [{"model_calls": 4.0}, {"model_calls": 5.0}],
    }
    latency = [
        {
            "served_p50_ms": {"mllm": m, "smoothguard": s, "smoothguard adaptive": a},
            "defended_p50_ms": d,
            "adaptive_p50_ms": i,
        }
        for m, s, a, d, i in ((10, 30, 20, 20, 10), (20, 50, 40, 20, 20), (10, 40, 20, 40, 10))
    ]
    saturation = [
        {"throughput_rps": {"mllm": m, "smoothguard": s, "smoothguard adaptive": a}}
        for m, s, a in ((400, 80, 100), (500, 80, 150), (600, 150, 120))
    ]
    results = {
        "perf": perf,
        "rounds": latency,
        "saturation": {"concurrency": 16, "rounds": saturation},
    }
    full = bench.summary(results)["smoothguard"]
    assert full["serving_overhead"] == 1.5  # rounds 1.5, 2.5, 1.0
    assert full["serving_overhead_range"] == [1.0, 2.5]
    assert full["p50_ratio_c1"] == 3.0  # rounds 3.0, 2.5, 4.0
    assert full["throughput_ratio"] == 0.2  # rounds 0.2, 0.16, 0.25
    assert full["throughput_ratio_range"] == [0.16, 0.25]
    assert full["rounds"] == 3 and full["saturation_concurrency"] == 16
    adaptive = bench.summary(results)["smoothguard adaptive"]
    assert adaptive["serving_overhead"] == 2.0 and adaptive["model_calls"] == 4.5
    assert adaptive["throughput_ratio"] == 0.25  # rounds 0.25, 0.3, 0.2


def test_zero_rounds_is_a_usage_error(bench: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        bench.main(["--out", str(tmp_path), "--rounds", "0"])
    assert stop.value.code == 2


def test_paired_rounds_reuse_the_first_windows_and_time_each_round(bench: ModuleType) -> None:
    def window(p50: float) -> dict[str, dict[str, float]]:
        return {"mllm": {"p50_ms": p50, "throughput_rps": 1000 / p50}}

    measured: list[int] = []
    timed: list[int] = []

    def measure(r: int) -> dict[str, dict[str, float]]:
        measured.append(r)
        return window(10.0 * r)

    def in_process() -> dict[str, float]:
        timed.append(len(timed) + 1)
        return {"defended_p50_ms": float(len(timed))}

    rounds = bench.paired_rounds(window(5.0), measure, 3, in_process)
    assert measured == [2, 3] and timed == [1, 2, 3]
    assert [r["served_p50_ms"]["mllm"] for r in rounds] == [5.0, 20.0, 30.0]
    assert [r["defended_p50_ms"] for r in rounds] == [1.0, 2.0, 3.0]
    assert "defended_p50_ms" not in bench.paired_rounds(window(5.0), measure, 1)[0]


def test_own_share_is_everything_but_the_mllm_rows(bench: ModuleType) -> None:
    assert bench.own_share({"mllm": 8.0, "noise": 1.0, "tritonserver": 1.0}) == pytest.approx(0.2)
    assert bench.own_share({"mllm": 5.0, "smoothguard_bls": 5.0}) == pytest.approx(0.5)
    assert bench.own_share({}) is None


def test_the_single_model_is_set_against_the_ensemble_round_by_round(bench: ModuleType) -> None:
    """Each round's single-model figure over the ensemble's of the same round, then the median:
    a machine that slows down in one round slows both sides of that round's ratio."""
    perf = {
        label: [{"model_calls": 10.0, "cpu_ms_per_request": {"mllm": 9.0, "noise": 1.0}}]
        for label in ("mllm", "smoothguard", "single model")
    }
    latency = [
        {
            "served_p50_ms": {"mllm": 10, "smoothguard": s, "single model": b},
            "defended_p50_ms": 20,
            "adaptive_p50_ms": 10,
        }
        for s, b in ((40, 30), (80, 72), (50, 50))  # 0.75, 0.9, 1.0
    ]
    saturation = [
        {"throughput_rps": {"mllm": 100, "smoothguard": s, "single model": b}}
        for s, b in ((20, 30), (10, 12), (40, 40))  # 1.5, 1.2, 1.0
    ]
    results = {
        "perf": perf,
        "rounds": latency,
        "saturation": {"concurrency": 16, "rounds": saturation},
    }
    summary = bench.summary(results)
    single = summary["single model"]
    assert single["vs_ensemble_p50_c1"] == pytest.approx(0.9)
    assert single["vs_ensemble_p50_c1_range"] == pytest.approx([0.75, 1.0])
    assert single["vs_ensemble_throughput"] == pytest.approx(1.2)
    assert single["own_share"] == pytest.approx(0.1)
    assert "vs_ensemble_p50_c1" not in summary["smoothguard"]
    assert "smoothguard adaptive" not in summary  # a series that was not measured


def test_server_time_is_tabled_for_the_first_concurrency(bench: ModuleType) -> None:
    perf = {
        "mllm": [
            {"concurrency": 1, "server_ms_per_request": {"mllm": 20.0}},
            {"concurrency": 16, "server_ms_per_request": {"mllm": 90.0}},
        ],
        "smoothguard": [
            {
                "concurrency": 1,
                "server_ms_per_request": {"smoothguard": 55.0, "generate": 48.0, "mllm": 44.0},
            },
            {"concurrency": 16, "server_ms_per_request": {"smoothguard": 600.0}},
        ],
    }
    lines = bench.server_time_table({"perf": perf})
    assert lines[0].startswith("Server time per request at concurrency 1")
    assert "| smoothguard | 0.00 | 55.00 |" in lines
    assert "| mllm | 20.00 | 44.00 |" in lines
    assert not any("600" in line for line in lines)  # the last concurrency is not this table
    assert bench.server_time_table({"perf": {"mllm": [{"concurrency": 1}]}}) == []
