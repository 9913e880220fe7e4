"""The soak's perf_analyzer runs go through the same driver as the serving benchmark's: its
figures come back from the CSV and the per-request export, a failure with perf_analyzer's
words."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

# Stands in for perf_analyzer: records its arguments, then writes a CSV row and an export of
# two requests (200 and 500 ms), or fails before measuring.
FAKE = """\
import json, sys
from pathlib import Path
args = sys.argv[1:]
Path(sys.argv[0]).with_suffix(".args").write_text(json.dumps(args))
if {broken}:
    print("error: failed to create concurrency manager", file=sys.stderr)
    sys.exit(1)
Path(args[args.index("-f") + 1]).write_text(
    "Concurrency,Inferences/Second,p50 latency,p90 latency,p95 latency,p99 latency\\n"
    "16,8.5,20000,30000,35000,40000\\n"
)
requests = [{{"timestamp": 0, "response_timestamps": [5, 200_000_000]}},
            {{"timestamp": 100, "response_timestamps": [500_000_100]}}]
export = Path(args[args.index("--profile-export-file") + 1])
export.write_text(json.dumps({{"experiments": [{{"requests": requests}}]}}))
"""


@pytest.fixture
def soak(
    benchmark_script: Callable[[str], ModuleType],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> ModuleType:
    module = benchmark_script("soak")
    monkeypatch.setattr(module.perf, "perf_analyzer_binary", lambda: str(tmp_path / "pa"))
    return module


def fake_binary(tmp_path: Path, broken: bool = False) -> Path:
    script = tmp_path / "pa.py"
    script.write_text(FAKE.format(broken=broken))
    launcher = tmp_path / "pa"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    launcher.chmod(0o755)
    return script


def test_a_timed_run_reports_the_csv_and_the_export(soak: ModuleType, tmp_path: Path) -> None:
    script = fake_binary(tmp_path)
    row = soak.perf_analyzer("x:1", tmp_path / "in.json", 16, tmp_path, window_ms=20_000)
    args = json.loads(script.with_suffix(".args").read_text())
    assert args[args.index("--measurement-interval") + 1] == "20000"
    assert args[args.index("--concurrency-range") + 1] == "16"
    assert row["returncode"] == 0 and row["wall_s"] > 0 and "error" not in row
    assert row["throughput_rps"] == 8.5 and (row["p50_ms"], row["p99_ms"]) == (20.0, 40.0)
    assert (row["requests"], row["latency_min_ms"], row["latency_max_ms"]) == (2, 200.0, 500.0)
    assert (tmp_path / "perf_soak.log").exists()


def test_a_failed_run_keeps_perf_analyzers_words(soak: ModuleType, tmp_path: Path) -> None:
    # An earlier run's CSV in the same folder is not taken for this run's figures.
    stale = "Concurrency,Inferences/Second,p50 latency,p90 latency,p95 latency,p99 latency\n"
    (tmp_path / "perf_warmup.csv").write_text(stale + "16,9,1,1,1,1\n")
    script = fake_binary(tmp_path, broken=True)
    row = soak.perf_analyzer("x:1", tmp_path / "in.json", 16, tmp_path, request_count=32)
    args = json.loads(script.with_suffix(".args").read_text())
    assert args[args.index("--request-count") + 1] == "32"
    assert row["returncode"] == 1 and "concurrency manager" in row["error"]
    assert "throughput_rps" not in row and "requests" not in row
