"""Evaluate SmoothGuard on SynthPOPE: utility, attack success with and without the defense,
cost, and the sigma / N sweeps (the paper's first three experiments).

    python -m smoothguard.evaluation --out var/eval             # full run
    python -m smoothguard.evaluation --smoke --out var/eval-smoke
    python -m smoothguard.evaluation --served 127.0.0.1:8001 ... # defended path over gRPC

Attacks are white-box and always computed in this process (they need gradients); the
adversarial images are saved under OUT/attacks/ and reused when the same attack is asked for
again, so an attack computed once can be replayed against a served endpoint.

This module is the run itself (evaluate) and its command; the parts sit beside it: config
(the budget), attack_runs (the attacks and their saved images), answering (in-process or
served answers), scoring, sweeps, report (tables and plots) and cli (shared with audio).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from smoothguard.core.settings import NOISE_UNITS, DefenseSettings
from smoothguard.evaluation.answerers import Answer, Answerer
from smoothguard.evaluation.answering import (
    collect_answers,
    in_process_answerer,
    served_answerer,
)
from smoothguard.evaluation.attack_runs import AttackRun, attack_plan, compute_attack
from smoothguard.evaluation.cli import add_served_arguments, run_from_args
from smoothguard.evaluation.config import SMOKE, EvalConfig, public_config
from smoothguard.evaluation.report import write_report
from smoothguard.evaluation.scoring import (
    Scorer,
    attack_success,
    fraction,
    policy_metrics,
    undefended_breaks,
)
from smoothguard.evaluation.sweeps import sweeps


def evaluate(config: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.synthetic.synthpope import HARMFUL_MARKER, load_benchmark

    started = time.perf_counter()
    served = served_answerer(config, log) if config.served else None  # refuse before any work
    config.out.mkdir(parents=True, exist_ok=True)
    bench = load_benchmark(config.split, config.n_pope, config.n_describe, config.n_safety)
    model = VisionLanguageModel.load(config.model_path, image_size=config.image_size or None)
    answerer: Answerer = served if served is not None else in_process_answerer(config, model)
    scorer = Scorer()
    stack = {task: np.stack([it.image for it in items]) for task, items in bench.items()}

    results: dict[str, Any] = {
        "config": public_config(config),
        "items": {task: len(items) for task, items in bench.items()},
        "path": "served " + config.served if config.served else "in-process",
    }
    modes = (
        ("undefended", "defended", "adaptive") if config.adaptive else ("undefended", "defended")
    )
    clean: dict[str, dict[str, list[Answer]]] = {}
    for task, items in bench.items():
        clean[task] = {
            mode: collect_answers(
                answerer,
                stack[task],
                items,
                config,
                mode=mode,
                desc=f"clean {task} {mode}",
            )
            for mode in modes
        }
    pope, describe = bench["pope"], bench["describe"]
    eligible = [
        scorer.correct(it, a.text) for it, a in zip(pope, clean["pope"]["undefended"], strict=True)
    ]
    results["utility"] = {
        mode: {
            "pope_accuracy": fraction(
                [
                    scorer.correct(it, a.text)
                    for it, a in zip(pope, clean["pope"][mode], strict=True)
                ]
            ),
            "describe_f1": float(
                np.mean(
                    [
                        scorer.f1(it, a.text)
                        for it, a in zip(describe, clean["describe"][mode], strict=True)
                    ]
                )
            ),
            "safety_harmful_rate": fraction(
                [scorer.harmful(a.text) for a in clean["safety"][mode]]
            ),
            "model_calls_per_request": float(np.mean([a.model_calls for a in clean["pope"][mode]])),
        }
        for mode in modes
    }
    log(f"utility: {json.dumps(results['utility'])}")

    results["attacks"] = {}
    attacked: dict[str, AttackRun] = {}
    for run in attack_plan(config):
        items = bench[run.task]
        broken = undefended_breaks(answerer, scorer, run.target)
        compute_attack(model, run, items, config, HARMFUL_MARKER, broken)
        attacked[run.name] = run
        row: dict[str, Any] = {
            "task": run.task,
            "eps": round(run.spec.eps * 255),
            "steps": run.spec.steps,
            "restarts": run.restarts,
            "eot_samples": run.spec.eot_samples,
            "universal": run.spec.universal,
            "attack_seconds": round(run.seconds, 1),
        }
        for mode in modes:
            answers = collect_answers(
                answerer, run.images, items, config, mode=mode, desc=f"{run.name} {mode}"
            )
            row[f"asr_{mode}"] = attack_success(scorer, run, items, answers, eligible)
            if mode == "defended":
                row["outvoted_rate"] = fraction([a.original_outvoted for a in answers])
                if run.target == "flip":
                    row["policy"] = policy_metrics(
                        scorer,
                        clean["pope"]["defended"],
                        answers,
                        items,
                        eligible,
                        DefenseSettings().min_agreement,
                    )
            if mode == "adaptive":
                row["calls_adaptive"] = float(np.mean([a.model_calls for a in answers]))
        results["attacks"][run.name] = row
        log(f"{run.name}: {json.dumps(row)}")

    if config.sweeps:
        results["sweeps"] = sweeps(config, answerer, scorer, bench, attacked, eligible)
    results["seconds"] = round(time.perf_counter() - started, 1)
    (config.out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(results, config.out)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=EvalConfig.out)
    parser.add_argument("--model-path", type=Path, default=EvalConfig.model_path)
    parser.add_argument(
        "--denoiser", type=Path, help="denoised smoothing: this denoiser between noise and model"
    )
    parser.add_argument("--served", metavar="URL", help="defended/undefended answers over gRPC")
    parser.add_argument("--smoke", action="store_true", help="a few items and PGD steps (CI)")
    for name in (
        "n_pope",
        "n_describe",
        "n_safety",
        "steps",
        "eot_steps",
        "restarts",
        "eot_samples",
        "num_samples",
        "sweep_items",
        "seed",
        "image_size",
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int)
    add_served_arguments(parser)
    parser.add_argument("--sigma", type=float)
    parser.add_argument("--pope-eps", type=int, nargs="+", metavar="K", help="yes/no eps, /255")
    parser.add_argument("--targeted-eps", type=int, nargs="+", metavar="K", help="marker eps")
    parser.add_argument(
        "--noise-unit",
        choices=NOISE_UNITS,
        help="what --sigma is stated in, as the server's defense.noise_unit (default normalized)",
    )
    parser.add_argument("--no-sweeps", action="store_true")
    parser.add_argument(
        "--no-adaptive", action="store_true", help="skip the adaptive-sampling column"
    )
    args = parser.parse_args(argv)
    return run_from_args(parser, args, EvalConfig, SMOKE, evaluate)
