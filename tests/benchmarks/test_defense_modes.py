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


def test_the_report_states_the_undefended_model_on_transfer_attacks_only(
    script: ModuleType,
) -> None:
    policy = {"served_wrong_abstain": 0.1, "clean_abstain_rate": 0.05, "auc_agreement": 0.7}
    attacks = {"pgd-8": 0.2, "eot-pgd-8": 0.3, "targeted-16": 0.0, "eot-targeted-16": 0.1}
    row = {
        "mode": "pixel-0.5",
        "description": "vote, sigma 0.5 (pixel)",
        "pope_undefended": 0.95,
        "pope_defended": 0.885,
        "attacks": attacks | {"universal-32": 0.0},
        # an EOT attack through sigma 0.5 barely fools the bare model: not its ASR
        "attacks_undefended": {"pgd-8": 1.0, "eot-pgd-8": 0.195, "universal-32": 1.0},
        "policy": {"pgd-8": policy, "eot-pgd-8": policy},
        "calls": 10,
        "ms_per_request": 36.0,
        "seconds": 1.0,
    }
    result = {
        "command": "python benchmarks/defense_modes.py",
        "machine": "x86_64, CPU only",
        "items": {"pope": 200, "safety": 20, "describe": 20},
        "rows": [row],
    }
    text = script.report(result)
    undefended = next(line for line in text.splitlines() if line.startswith("Undefended"))
    assert undefended == "Undefended: POPE 95.0%, transfer ASR pgd-8 100.0%, universal-32 100.0%."
    assert "| pixel-0.5 | 88.5% | 20.0% | 30.0% | 0.0% | 10.0% | 0.0% |" in text
    assert "N = 10;" in text
