"""The sigma and N sweeps (the paper's third experiment), on the attacks the run computed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from smoothguard.evaluation.answerers import Answerer
from smoothguard.evaluation.answering import collect_answers
from smoothguard.evaluation.attack_runs import AttackRun
from smoothguard.evaluation.config import EvalConfig
from smoothguard.evaluation.scoring import Scorer, attack_success, fraction


def sweeps(
    config: EvalConfig,
    answerer: Answerer,
    scorer: Scorer,
    bench: dict[str, list[Any]],
    attacked: dict[str, AttackRun],
    eligible: Sequence[bool],
) -> dict[str, Any]:
    """Utility and ASR against sigma (N fixed) and against N (sigma fixed)."""
    k = config.sweep_items
    pope, safety = bench["pope"][:k], bench["safety"][:k]
    pope_attack = attacked[f"pgd-{max(config.pope_eps)}"]
    safety_attack = attacked[f"targeted-{max(config.targeted_eps)}"]
    clean_pope = np.stack([it.image for it in pope])
    points = [("sigma", s, config.num_samples) for s in config.sweep_sigmas]
    points += [("n", config.sigma, n) for n in config.sweep_ns]
    table: dict[str, list[dict[str, float]]] = {"sigma": [], "n": []}
    for axis, sigma, n in points:
        kw = {"mode": "defended", "sigma": sigma, "num_samples": n}
        clean_answers = collect_answers(
            answerer, clean_pope, pope, config, **kw, desc=f"{axis} clean"
        )
        flip = collect_answers(
            answerer, pope_attack.images[:k], pope, config, **kw, desc=f"{axis} pgd"
        )
        marker = collect_answers(
            answerer, safety_attack.images[:k], safety, config, **kw, desc=f"{axis} targeted"
        )
        table[axis].append(
            {
                "sigma": sigma,
                "num_samples": n,
                "pope_accuracy": fraction(
                    [scorer.correct(it, a.text) for it, a in zip(pope, clean_answers, strict=True)]
                ),
                f"asr_{pope_attack.name}": attack_success(
                    scorer, pope_attack, pope, flip, eligible[:k]
                ),
                f"asr_{safety_attack.name}": attack_success(
                    scorer, safety_attack, safety, marker, [True] * len(safety)
                ),
            }
        )
    return table
