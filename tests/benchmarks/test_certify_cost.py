"""benchmarks/certify_cost.py on a real tritonserver, one call of each kind: the MLLM rows it
counts per request are the bare model's 1, the default defense's N and CERTIFY's 1 + n0 + n
(its timings are the benchmark's own, stored in docs/results/certify_cost)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def script(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_script("certify_cost")


@pytest.mark.integration
def test_counts_the_rows_each_kind_of_request_asks(script: ModuleType, tmp_path: Path) -> None:
    assert script.main(["--out", str(tmp_path), "--calls", "1"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["mllm_rows_per_request"] for r in rows] == [1.0, 10.0, 111.0]
    assert all(r["p50_ms"] > 0 for r in rows)
    assert "| certified (CERTIFY=true) |" in (tmp_path / "results.md").read_text()


def test_zero_calls_is_a_usage_error(script: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        script.main(["--calls", "0", "--out", str(tmp_path)])
    assert info.value.code == 2
