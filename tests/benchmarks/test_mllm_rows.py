"""benchmarks/mllm_rows.py: times the model as loaded (folded) beside the checkpoint as stored
on the same draws; its figures are the benchmark's own (docs/results/mllm_rows_folded)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def script(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_script("mllm_rows")


def test_both_forms_are_timed_for_each_row_count(script: ModuleType, tmp_path: Path) -> None:
    assert script.main(["--rows", "1", "3", "--calls", "2", "--out", str(tmp_path)]) == 0
    p50 = json.loads((tmp_path / "results.json").read_text())["p50_ms"]
    assert set(p50) == {"folded", "stored"}
    for form in p50.values():
        assert set(form) == {f"{t} thread(s), {r} row(s)" for t in (1, 2) for r in (1, 3)}
        assert all(ms > 0 for ms in form.values())
    table = (tmp_path / "results.md").read_text()
    assert table.count("| folded |") == 2 and table.count("| stored |") == 2


def test_folded_only_times_one_form(script: ModuleType, tmp_path: Path) -> None:
    argv = ["--rows", "2", "--calls", "1", "--folded-only", "--out", str(tmp_path)]
    assert script.main(argv) == 0
    assert set(json.loads((tmp_path / "results.json").read_text())["p50_ms"]) == {"folded"}


def test_zero_rows_is_a_usage_error(script: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        script.main(["--rows", "0", "--out", str(tmp_path)])
    assert info.value.code == 2
