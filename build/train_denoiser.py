"""Train the denoiser for denoised smoothing on SynthPOPE, evaluate it and ship it.

    python build/train_denoiser.py                       # -> models/denoiser (<= 12 min, 2 cores)
    python build/train_denoiser.py --out /tmp/d --loss mse --compare models/denoiser

Writes config.json and model.safetensors (what smoothguard.adapters.denoiser.Denoiser.load
reads), evaluation.json (the training record and SynthVLM's POPE accuracy on clean, noisy and
denoised copies of SynthPOPE test images, with PSNR) and the model card README.md. --compare
adds other runs' evaluation.json (e.g. the other loss variant) to the card's table.
Deterministic under --seed when the run ends by its step count (the record says when the
--max-minutes guard stopped it first).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))
sys.path.insert(0, str(REPO_ROOT / "build"))

from train_vlm import (  # noqa: E402
    non_negative_float,
    positive_float,
    positive_int,
    share,
)

from smoothguard.synthetic.denoiser.train import (  # noqa: E402
    FEATURE_LAYERS,
    LOSSES,
    TrainConfig,
    evaluate,
    train,
)

LAYER_NAMES = {"stem": "vision-stem", "stage1": "vision-stage-1", "tokens": "image-token"}
# Minutes of --max-minutes kept back from training for loading the VLM and the evaluation.
EVAL_RESERVE_MINUTES = 2.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def table(runs: list[dict[str, Any]]) -> str:
    """One markdown table over runs (this one first): PSNR and POPE accuracy per sigma."""
    lines = [
        "| loss | sigma (pixel) | PSNR noisy | PSNR denoised | POPE clean | POPE noisy "
        "| POPE denoised |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        loss = run["training"]["config"]["loss"]
        for row in run["evaluation"]["table"]:
            if row["sigma"] == 0:
                continue
            lines.append(
                f"| {loss} | {row['sigma']} | {row['psnr_noisy']:.2f} dB "
                f"| {row['psnr_denoised']:.2f} dB | {_pct(row['pope_clean'])} "
                f"| {_pct(row['pope_noisy'])} | {_pct(row['pope_denoised'])} |"
            )
    return "\n".join(lines)


def findings(record: dict[str, Any], compare: list[dict[str, Any]]) -> str:
    """The table in a sentence per run: denoised vs the raw noisy copy, in points."""
    sentences = []
    for run in [record, *compare]:
        rows = [r for r in run["evaluation"]["table"] if r["sigma"] > 0]
        deltas = ", ".join(
            f"{100 * (r['pope_denoised'] - r['pope_noisy']):+.1f} at {r['sigma']}" for r in rows
        )
        sentences.append(
            f"`{run['training']['config']['loss']}`: denoised minus noisy, points: {deltas}."
        )
    n = record["evaluation"]["pope_items"]
    return (
        "Reading it: SynthVLM was itself trained on noisy copies (sigma up to 0.6 pixel), so "
        "the raw noisy copy is a strong baseline, and a denoised copy only helps where it keeps "
        "what the VLM reads; an MSE-only denoiser blurs small shapes into blobs. "
        + " ".join(sentences)
        + f" One standard error on {n} items is about "
        f"{100 * (0.8 * 0.2 / n) ** 0.5:.1f} points at 80% accuracy (the noisy and denoised "
        "columns share their noise draws)."
    )


def loss_text(config: dict[str, Any]) -> str:
    """The model-aware term in words, for the card."""
    after = (
        f", switched on after {100 * config['model_aware_from']:.0f}% of the steps on MSE alone"
        if config["model_aware_from"] > 0
        else ""
    )
    if config["loss"] == "mse+features":
        return (
            f": pixel MSE plus {config['feature_weight']} x the MSE between SynthVLM's "
            f"{' and '.join(LAYER_NAMES[n] for n in config['feature_layers'])} features for the "
            "denoised and the clean "
            f"image, relative to the clean features' mean square{after}."
        )
    if config["loss"] == "mse+stability":
        return (
            f": pixel MSE plus {config['stability_weight']} x the KL between SynthVLM's yes/no "
            f"answer to a POPE question on the clean and the denoised image{after}."
        )
    return ": pixel MSE alone."


def model_card(out: Path, record: dict[str, Any], compare: list[dict[str, Any]]) -> str:
    training = record["training"]
    config = training["config"]
    arch = json.loads((out / "config.json").read_text())["architecture"]
    weights = out / "model.safetensors"
    evaluation = record.get("evaluation")
    parts = [
        "# SmoothGuard denoiser (SynthPOPE)",
        "",
        "A small sigma-conditioned U-Net for denoised smoothing (Salman et al. 2020, "
        '"Denoised Smoothing"): it maps a Gaussian-noised copy of a 64x64 SynthPOPE image back '
        "toward the clean image before SynthVLM (`models/synthvlm`) answers it.",
        "",
        "```python",
        "from smoothguard.adapters.denoiser import Denoiser",
        "",
        'denoiser = Denoiser.load("models/denoiser")',
        "clean_estimate = denoiser(noisy_pixels, sigma)  # [B,3,H,W] pixels, sigma in pixel units",
        "```",
        "",
        "## Model",
        "",
        f"- kind `smoothguard-unet`: channels {arch['channels']} (pixel-unshuffle "
        f"x{arch['unshuffle']} at the stem, then {len(arch['channels']) - 1} down / up steps), "
        f"{arch['blocks']} residual block{'s' if arch['blocks'] > 1 else ''} per level "
        "(GroupNorm, SiLU), sigma as an input channel and by FiLM in every block; predicts the "
        "noise, output = input - noise, clamped to [0, 1].",
        f"- {training['parameters']:,} parameters; `model.safetensors` "
        f"{weights.stat().st_size:,} bytes, sha256 `{sha256(weights)}`.",
        "- Input: pixels in [0, 1] units plus noise, clipped or not; sigma in pixel units "
        f"(the server's `noise_unit: pixel`), trained for sigma in [0, {config['sigma_max']}] "
        f"({100 * config['zero_share']:.0f}% of rows at sigma 0, so clean input comes back "
        "near unchanged); any H and W (padded to a multiple of "
        f"{arch['unshuffle'] * 2 ** (len(arch['channels']) - 1)} and cropped back).",
        "",
        "## Training",
        "",
        f"- `python build/train_denoiser.py --loss {config['loss']} --seed {config['seed']} "
        f"--scenes {config['scenes']} --steps {config['steps']}`: "
        f"{training['steps']} AdamW steps of {config['batch_size']} images, cosine LR from "
        f"{config['lr']}, on {config['scenes']:,} SynthPOPE train scenes (random flips), noise "
        f"sigma ~ U[0, {config['sigma_max']}], half the batches clipped to [0, 1].",
        f"- Loss `{config['loss']}`" + loss_text(config),
        f"- Wall time: {record['total_seconds']:.0f} s for the whole command "
        f"({training['data_seconds']:.0f} s rendering, {training['train_seconds']:.0f} s "
        f"training{', stopped early by the time cap' if training['stopped_early'] else ''}) on "
        f"{config['threads']} CPU thread{'s' if config['threads'] > 1 else ''}.",
        "",
    ]
    val = training["validation"]
    parts += [
        f"Validation ({config['val_scenes']} validation scenes, clipped noise): PSNR noisy -> "
        "denoised "
        + ", ".join(
            f"sigma {s}: {v['psnr_noisy']} -> {v['psnr_denoised']} dB"
            for s, v in val.items()
            if float(s) > 0
        )
        + f"; sigma 0: {val['0.0']['psnr_denoised']} dB (identity would be infinite).",
        "",
    ]
    if evaluation is not None:
        parts += [
            "## Evaluation",
            "",
            f"SynthVLM's POPE yes/no accuracy on {evaluation['pope_items']} SynthPOPE "
            f"`{evaluation['split']}` items, one noisy copy per item drawn as the defense draws "
            f"it (pixel units, clipped to [0, 1], seed {evaluation['seed']}, so the noisy column "
            "is SynthVLM's own model card's), on the clean image, the noisy copy, and the noisy "
            "copy through the denoiser. PSNR "
            "against the clean image.",
            "",
            table([record, *compare]),
            "",
        ]
        parts += [findings(record, compare), ""]
        if compare:
            parts += [
                "Rows after the first group are other runs of this script with another "
                "`--loss` (same seed, data, steps and evaluation), kept for comparison; this "
                f"checkpoint is the `{config['loss']}` run.",
                "",
            ]
    parts += [
        "## Limits",
        "",
        "- Trained on SynthPOPE scenes only: a denoiser for real photographs needs real data.",
        "- It is part of the model an adaptive attacker differentiates through (the adapter "
        "keeps it in torch for that reason); it is no defense on its own.",
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "denoiser")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--scenes", type=positive_int, default=defaults.scenes)
    parser.add_argument("--steps", type=positive_int, default=defaults.steps)
    parser.add_argument("--loss", choices=LOSSES, default=defaults.loss)
    parser.add_argument(
        "--feature-weight", type=non_negative_float, default=defaults.feature_weight
    )
    parser.add_argument(
        "--feature-layers", nargs="+", choices=FEATURE_LAYERS, default=list(defaults.feature_layers)
    )
    parser.add_argument(
        "--model-aware-from",
        type=share,
        default=defaults.model_aware_from,
        help="share of the steps on MSE alone before the model-aware term joins",
    )
    parser.add_argument(
        "--stability-weight", type=non_negative_float, default=defaults.stability_weight
    )
    parser.add_argument(
        "--max-minutes",
        type=positive_float,
        default=12.0,
        help=f"wall-clock cap for the whole command ({EVAL_RESERVE_MINUTES} min kept for "
        "the evaluation; training stops early to honour it)",
    )
    parser.add_argument("--threads", type=positive_int, default=defaults.threads)
    parser.add_argument("--eval-items", type=positive_int, default=600, help="SynthPOPE test items")
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="*",
        default=[],
        help="other runs' output folders whose evaluation joins the model card's table",
    )
    parser.add_argument(
        "--card-only",
        action="store_true",
        help="rewrite README.md from --out's evaluation.json (and --compare) without training",
    )
    args = parser.parse_args(argv)
    if not args.no_eval and not args.card_only and args.max_minutes <= EVAL_RESERVE_MINUTES:
        parser.error(
            f"--max-minutes must exceed the {EVAL_RESERVE_MINUTES} min kept for the evaluation "
            f"(or pass --no-eval), got {args.max_minutes}"
        )
    started = time.perf_counter()
    config = dataclasses.replace(
        defaults,
        seed=args.seed,
        scenes=args.scenes,
        steps=args.steps,
        loss=args.loss,
        feature_weight=args.feature_weight,
        feature_layers=tuple(args.feature_layers),
        model_aware_from=args.model_aware_from,
        stability_weight=args.stability_weight,
        max_minutes=args.max_minutes - (0.0 if args.no_eval else EVAL_RESERVE_MINUTES),
        threads=args.threads,
    )
    compare = [json.loads((folder / "evaluation.json").read_text()) for folder in args.compare]
    if args.card_only:
        record = json.loads((args.out / "evaluation.json").read_text())
        (args.out / "README.md").write_text(model_card(args.out, record, compare))
        print(f"{args.out / 'README.md'} rewritten from evaluation.json")
        return 0
    training = train(args.out, config)
    training["config"] = dataclasses.asdict(config)
    record: dict[str, Any] = {"training": training}
    if not args.no_eval:
        from smoothguard.adapters.denoiser import Denoiser
        from smoothguard.adapters.mllm import VisionLanguageModel

        vlm = VisionLanguageModel.load(config.vlm)
        denoiser = Denoiser.load(args.out)
        record["evaluation"] = evaluate(denoiser, vlm, n_pope=args.eval_items, seed=args.seed)
    record["total_seconds"] = round(time.perf_counter() - started, 1)
    record["sha256"] = {"model.safetensors": sha256(args.out / "model.safetensors")}
    training["config"]["vlm"] = os.path.relpath(config.vlm, REPO_ROOT)
    (args.out / "evaluation.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "README.md").write_text(model_card(args.out, record, compare))
    for path in args.out.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; the checkpoint is meant to be shared
    if "evaluation" in record:
        print(table([record, *compare]))
    print(f"{args.out}: {record['total_seconds']:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
