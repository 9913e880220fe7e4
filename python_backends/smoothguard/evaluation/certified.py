"""Certified evaluation on SynthPOPE: certified accuracy against L2 radius, and a soundness check
of the certificates against L2 attacks on the smoothed classifier.

    python -m smoothguard.evaluation.certified --out var/certified
    python -m smoothguard.evaluation.certified --smoke --out var/certified-smoke

For each yes/no test item, CERTIFY (Cohen et al. 2019) runs in process (`SmoothGuard.certify`,
noise in pixel units, so the radius is L2 in [0, 1] pixels at the model's 64x64 input). The
certified accuracy at radius r is the share of all items certified with the gold answer and a
radius of at least r.

Soundness: the certificate says that, with probability at least 1 - alpha, the smoothed model
answers the certified class everywhere within the radius. So for each certified item an L2
EOT-PGD attack on the smoothed classifier (gradients averaged over the certified sigma's noise,
pushing the other class) gets `factor` x the radius, and PREDICT with fresh draws asks the
smoothed model's answer at the adversarial image. PREDICT is wrong with probability at most
alpha too, so a flip (a class other than the certified one) should happen at most about
2 alpha of the time; the check passes unless the flip count rules that rate out (its one-sided
95% Clopper-Pearson lower bound is above 2 alpha). Adversarial images stay float (L2 attacks
are not rounded to uint8, which alone moves a 64x64 image by ~0.13 in L2) and are never saved.
A control attack at `control_factor` x the radius (outside it) shows the attack can flip the
smoothed model given room, so that no flips inside it mean something.

Every draw is seeded from --seed (per item and purpose), so a run reproduces.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from smoothguard.core.certify import YES_NO, clopper_pearson_lower
from smoothguard.core.settings import DefenseSettings, resolve_options
from smoothguard.evaluation.config import REPO_ROOT, public_config

RADII = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)
# Confidence of the flip-rate bounds the soundness check reports.
FLIP_CONFIDENCE = 0.95
# Seed streams per item, so certify, the attack and PREDICT never share draws.
_CERTIFY, _ATTACK, _PREDICT, _CONTROL_ATTACK, _CONTROL_PREDICT = range(5)


@dataclass(frozen=True)
class CertifiedConfig:
    out: Path = REPO_ROOT / "var" / "certified"
    model_path: Path = REPO_ROOT / "models" / "synthvlm"
    image_size: int = 0  # mllm.image_size, for checkpoints without a resolution of their own
    # Denoised smoothing: the base classifier is denoiser + model; the soundness attack
    # differentiates through both, and the guarantee covers the pair.
    denoiser: Path | None = None
    split: str = "test"
    items: int = 100
    sigma: float = 0.25  # pixel units
    selection_draws: int = 100
    estimation_draws: int = 1000
    predict_draws: int | None = None  # PREDICT's draws; None: as many as estimation's
    alpha: float = 0.001
    attack_steps: int = 20
    eot: int = 8
    factor: float = 0.99  # attack eps = factor x certified radius: strictly inside
    # The same attack at this multiple of the radius, outside it: flips there show that the
    # attack has teeth, so no flips inside mean something. None: skipped.
    control_factor: float | None = 5.0
    max_new_tokens: int = 3  # the class is the first word
    batch_size: int = 128
    seed: int = 0
    threads: int | None = None  # torch CPU threads; None: torch's default

    @property
    def draws_to_predict(self) -> int:
        return self.estimation_draws if self.predict_draws is None else self.predict_draws

    def __post_init__(self) -> None:
        counts = ("items", "selection_draws", "estimation_draws", "predict_draws", "attack_steps")
        for name in (*counts, "eot", "max_new_tokens", "batch_size", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if not (math.isfinite(self.sigma) and 0 < self.sigma <= DefenseSettings.sigma_max):
            raise ValueError(f"--sigma must be in (0, {DefenseSettings.sigma_max}]")
        if not 0 < self.alpha < 1:
            raise ValueError("--alpha must be in (0, 1)")
        if not 0 < self.factor <= 1:
            raise ValueError("--factor must be in (0, 1]")
        if self.control_factor is not None and not self.control_factor > 1:
            raise ValueError("--control-factor must be above 1 (outside the radius)")
        if self.seed < 0:
            raise ValueError("--seed must be non-negative")


SMOKE: dict[str, Any] = {
    "items": 4,
    "selection_draws": 8,
    "estimation_draws": 32,
    "predict_draws": 32,
    "alpha": 0.05,
    "attack_steps": 3,
    "eot": 2,
}


def item_seed(seed: int, item: int, stream: int) -> int:
    """A seed per (run, item, purpose) that no other pair shares."""
    return int(np.random.SeedSequence([seed, item, stream]).generate_state(1)[0])


def certified_accuracy(rows: Sequence[dict[str, Any]], radius: float) -> float:
    """Share of all items certified with the gold answer at a radius of at least `radius`."""
    if not rows:
        return float("nan")
    return sum(r["certified"] and r["correct"] and r["radius"] >= radius for r in rows) / len(rows)


def flip_bounds(flips: int, trials: int) -> tuple[float, float]:
    """One-sided FLIP_CONFIDENCE Clopper-Pearson lower and upper bounds on the flip rate."""
    if trials == 0:
        return float("nan"), float("nan")
    miss = 1 - FLIP_CONFIDENCE
    lower = clopper_pearson_lower(flips, trials, miss)
    upper = 1.0 - clopper_pearson_lower(trials - flips, trials, miss)
    return lower, upper


def soundness(rows: Sequence[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """Flips among the attacked certified items, and whether they are consistent with the
    2 alpha a sound certificate plus PREDICT allow."""
    attacked = [r["attack"] for r in rows if r.get("attack")]
    flips = sum(a["flipped"] for a in attacked)
    lower, upper = flip_bounds(flips, len(attacked))
    allowed = 2 * alpha
    return {
        "attacked": len(attacked),
        "flips": flips,
        "abstained": sum(a["prediction"] is None for a in attacked),
        "kept": sum(a["prediction"] == a["certified"] for a in attacked),
        "flip_rate": flips / len(attacked) if attacked else float("nan"),
        "flip_rate_lower": lower,
        "flip_rate_upper": upper,
        "confidence": FLIP_CONFIDENCE,
        "allowed_rate": allowed,
        "max_l2": max((a["l2"] for a in attacked), default=0.0),
        "passes": bool(flips == 0 or lower <= allowed),
    }


def control(rows: Sequence[dict[str, Any]], factor: float | None) -> dict[str, Any]:
    """Flips of the attack outside the radius: no bound applies there, they only show that
    the attack could flip the smoothed classifier given room."""
    attacked = [r["control"] for r in rows if r.get("control")]
    flips = sum(a["flipped"] for a in attacked)
    return {
        "factor": factor,
        "attacked": len(attacked),
        "flips": flips,
        "flip_rate": flips / len(attacked) if attacked else float("nan"),
    }


def evaluate(config: CertifiedConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.core.pipeline import SmoothGuard
    from smoothguard.evaluation.answering import copy_denoiser
    from smoothguard.evaluation.attacks import (
        AttackSpec,
        normalize_pixels,
        pgd,
        to_unit_pixels,
    )
    from smoothguard.synthetic.synthpope import load_benchmark

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    items = load_benchmark(config.split, config.items, 1, 1)["pope"]
    model = VisionLanguageModel.load(config.model_path, image_size=config.image_size or None)
    settings = DefenseSettings(noise_unit="pixel", max_new_tokens=config.max_new_tokens)
    denoiser = copy_denoiser(config, model)
    guard = SmoothGuard(
        generate=lambda pv, prompt, n: model.generate(pv, prompt, max_new_tokens=n),
        embed=lambda texts: np.zeros((len(texts), 1), np.float32),  # certify never votes
        image_mean=model.image_mean,
        image_std=model.image_std,
        settings=settings,
        denoise=denoiser,
    )

    def options(index: int, stream: int) -> Any:
        return resolve_options(
            settings,
            sigma=config.sigma,
            seed=item_seed(config.seed, index, stream),
            max_new_tokens=config.max_new_tokens,
            num_samples=1,
        )

    # The clean image as the attack sees it (at the model's resolution, in [0, 1]): certify
    # and attack around the very same point.
    clean = to_unit_pixels(model, [it.image for it in items]).permute(0, 2, 3, 1).numpy()
    rows: list[dict[str, Any]] = []
    for index, it in enumerate(tqdm(items, desc="certify", unit="item")):
        pixel_values = normalize_pixels(model, clean[index : index + 1])[0]
        cert = guard.certify(
            pixel_values,
            it.prompt,
            options(index, _CERTIFY),
            selection_draws=config.selection_draws,
            estimation_draws=config.estimation_draws,
            alpha=config.alpha,
            batch=config.batch_size,
            classes=YES_NO,
        )
        gold = it.answer.strip().lower().rstrip(".")
        rows.append(
            {
                "index": index,
                "scene_seed": it.source_seed,
                "prompt": it.prompt,
                "gold": gold,
                "certified": cert.certified,
                "label": cert.label,
                "radius": cert.radius,
                "p_lower": cert.p_lower,
                "correct": cert.label == gold,
                "selection_counts": cert.selection_counts,
                "estimation_counts": cert.estimation_counts,
            }
        )

    def attack(row: dict[str, Any], factor: float, streams: tuple[int, int]) -> dict[str, Any]:
        """L2 EOT-PGD at factor x the radius on the smoothed classifier, then PREDICT."""
        index, label = row["index"], row["label"]
        other = next(c for c in YES_NO if c != label)
        spec = AttackSpec(
            eps=factor * row["radius"],
            steps=config.attack_steps,
            eot_samples=config.eot,
            sigma=config.sigma,
            noise_unit="pixel",
            seed=item_seed(config.seed, index, streams[0]),
            norm="l2",
        )
        adv = pgd(
            model,
            [items[index].image],
            [row["prompt"]],
            push=[other],
            pull=[label],
            spec=spec,
            denoise=None if denoiser is None else denoiser.normalised,
        )
        prediction = guard.predict(
            normalize_pixels(model, adv)[0],
            row["prompt"],
            options(index, streams[1]),
            draws=config.draws_to_predict,
            alpha=config.alpha,
            batch=config.batch_size,
            classes=YES_NO,
        )
        return {
            "eps": spec.eps,
            "l2": float(np.linalg.norm((adv[0].astype(np.float64) - clean[index]).ravel())),
            "certified": label,
            "prediction": prediction.label,
            "p_value": prediction.p_value,
            "counts": prediction.counts,
            "flipped": prediction.label is not None and prediction.label != label,
        }

    targets = [r for r in rows if r["certified"]]
    for row in tqdm(targets, desc="attack + predict", unit="item"):
        row["attack"] = attack(row, config.factor, (_ATTACK, _PREDICT))
    if config.control_factor is not None:
        for row in tqdm(targets, desc="control attack", unit="item"):
            row["control"] = attack(row, config.control_factor, (_CONTROL_ATTACK, _CONTROL_PREDICT))

    certified_radii = [r["radius"] for r in rows if r["certified"]]
    results: dict[str, Any] = {
        "config": {
            **public_config(config),
            "predict_draws": config.draws_to_predict,
        },
        "model_input": list(model.image_size),
        "noise_unit": "pixel",
        "items": len(rows),
        "certified": len(certified_radii),
        "certified_correct": sum(r["certified"] and r["correct"] for r in rows),
        "certified_accuracy": {str(r): certified_accuracy(rows, r) for r in RADII},
        "median_radius": statistics.median(certified_radii) if certified_radii else float("nan"),
        "soundness": soundness(rows, config.alpha),
        "control": control(rows, config.control_factor),
        "rows": rows,
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    (config.out / "results.json").write_text(json.dumps(results, indent=2))
    (config.out / "results.md").write_text(markdown(results))
    plot(rows, config, config.out / "certified_accuracy_vs_radius.png")
    log(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    cfg, s = results["config"], results["soundness"]
    radii = list(results["certified_accuracy"])
    lines = [
        f"# Certified accuracy on SynthPOPE ({cfg['split']} split, in process)",
        "",
        f"CERTIFY{' through the denoiser ' + str(cfg['denoiser']) if cfg.get('denoiser') else ''}"
        f": sigma {cfg['sigma']} (pixel), n0 = {cfg['selection_draws']}, "
        f"n = {cfg['estimation_draws']}, alpha = {cfg['alpha']}; {results['items']} items, "
        f"{results['certified']} certified ({results['certified_correct']} with the gold "
        f"answer). Median certified radius {results['median_radius']:.3f} (L2, [0, 1] pixels "
        f"at the model's {'x'.join(map(str, results['model_input']))} input). "
        f"Wall time {results.get('seconds', 'n/a')} s.",
        "",
        "| radius | " + " | ".join(radii) + " |",
        "|---" * (len(radii) + 1) + "|",
        "| certified accuracy | "
        + " | ".join(f"{100 * results['certified_accuracy'][r]:.1f}%" for r in radii)
        + " |",
        "",
        f"Soundness: L2 EOT-PGD on the smoothed classifier ({cfg['attack_steps']} steps, "
        f"EOT {cfg['eot']}, eps = {cfg['factor']} x each certified radius, pushing the other "
        f"class), then PREDICT with {cfg['predict_draws']} fresh draws at alpha {cfg['alpha']}.",
        "",
        "| attacked | flips | kept | abstained | flip rate | "
        f"{int(100 * s['confidence'])}% bounds | allowed (2 alpha) | passes |",
        "|---|---|---|---|---|---|---|---|",
        f"| {s['attacked']} | {s['flips']} | {s['kept']} | {s['abstained']} | "
        f"{_rate(s['flip_rate'])} | [{_rate(s['flip_rate_lower'])}, "
        f"{_rate(s['flip_rate_upper'])}] | {_rate(s['allowed_rate'])} | "
        f"{'yes' if s['passes'] else 'NO'} |",
    ]
    c = results.get("control", {})
    if c.get("attacked"):
        lines += [
            "",
            f"Control: the same attack at {c['factor']} x each radius (outside it, where no "
            f"bound applies) flipped {c['flips']} of {c['attacked']} ({_rate(c['flip_rate'])}).",
        ]
    return "\n".join(lines) + "\n"


def _rate(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}%"


def plot(rows: Sequence[dict[str, Any]], config: CertifiedConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max([r["radius"] for r in rows] + [RADII[-1]])
    grid = np.linspace(0.0, top * 1.05, 400)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid, [certified_accuracy(rows, float(r)) for r in grid], "-", label="certified")
    ax.plot(RADII, [certified_accuracy(rows, r) for r in RADII], "o")
    ax.set_xlabel("L2 radius ([0, 1] pixels at the model's input)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(
        f"SynthPOPE, sigma {config.sigma} (pixel), n = {config.estimation_draws}, "
        f"alpha = {config.alpha}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=CertifiedConfig.out)
    parser.add_argument("--model-path", type=Path)
    parser.add_argument("--denoiser", type=Path, help="denoised smoothing: certify denoiser+model")
    parser.add_argument("--smoke", action="store_true", help="a few items and draws (CI)")
    for name in (
        "items",
        "selection_draws",
        "estimation_draws",
        "predict_draws",
        "attack_steps",
        "eot",
        "batch_size",
        "seed",
        "threads",
        "image_size",
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int)
    for name in ("sigma", "alpha", "factor", "control_factor"):
        parser.add_argument("--" + name.replace("_", "-"), type=float)
    parser.add_argument("--no-control", action="store_true", help="skip the control attack")
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(SMOKE) if args.smoke else {}
    if args.no_control:
        values["control_factor"] = None
    for f in dataclasses.fields(CertifiedConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    try:
        config = CertifiedConfig(**values)
    except ValueError as exc:
        parser.error(str(exc))
    results = evaluate(config, log=lambda _: None)
    print(markdown(results))
    print(f"wrote {config.out}/results.json, results.md and certified_accuracy_vs_radius.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
