"""benchmarks/defense_modes.py: every mode shares the items and the transfer attacks, differs in
noise, unit and denoiser; bad budgets are usage errors (the runs themselves are stored in
docs/results/modes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from smoothguard.evaluation.config import EvalConfig


@pytest.fixture(scope="module")
def script(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_script("defense_modes")


def test_modes_differ_only_in_the_defense(script: ModuleType, tmp_path: Path) -> None:
    base = EvalConfig(n_pope=5, pope_eps=(8,), targeted_eps=(16,))
    configs = [script.mode_config(base, m, tmp_path, Path("/d")) for m in script.MODES]
    assert [c.out.name for c in configs] == [m.name for m in script.MODES]
    assert {(c.n_pope, c.pope_eps, c.steps, c.eot_samples, c.seed) for c in configs} == {
        (5, (8,), base.steps, base.eot_samples, base.seed)
    }
    paper = configs[0]
    assert (paper.noise_unit, paper.sigma, paper.denoiser) == ("normalized", 0.15, None)
    assert [c.denoiser is not None for c in configs] == [m.denoiser for m in script.MODES]


def test_zero_items_is_a_usage_error(script: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        script.main(["--n-pope", "0", "--out", str(tmp_path)])
    assert info.value.code == 2
