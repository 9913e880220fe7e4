"""CI version of the soak (benchmarks/soak.py --ci): a minute at concurrency 16 against the
shared test server, with zero failed requests and bounded memory growth."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def test_soak_under_concurrency_16(triton: Any, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    assert spec is not None and spec.loader is not None
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    assert triton.server.process is not None
    code = soak.main(
        [
            "--ci",
            "--out", str(tmp_path),
            "--url", triton.grpc_url,
            "--metrics-url", triton.metrics_url,
            "--server-pid", str(triton.server.process.pid),
            "--warmup-requests", "16",
        ]
    )  # fmt: skip
    result = json.loads((tmp_path / "soak.json").read_text())
    print(json.dumps({k: result[k] for k in ("served", "failed", "rss_growth", "checks")}))
    assert result["checks"]["perf_analyzer_ok"], result["run"].get("error")
    assert result["failed"] == 0
    assert result["served"] >= 16, "a minute at concurrency 16 must serve real traffic"
    assert result["rss_growth"] < 0.10, result["rss_samples"]
    assert code == 0 and result["passed"]
