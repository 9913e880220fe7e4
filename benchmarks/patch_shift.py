"""Does the defense's noise drown an attack where the image first meets the model?

A vision tower's first layer is linear: a patch embedding (ViTs) or a convolution (ResNets);
each output channel c at a position is ``<W_c, window>`` over the pixels it reads. Gaussian
noise moves it by a zero-mean amount of standard deviation ``||W_c||_2 * sigma`` (per input
channel, in the model's normalised space); an L-inf perturbation of size eps can move it by up
to ``eps * ||W_c||_1``, about ``0.8 * sqrt(d)`` times more for a dense filter over
d = 3 * k^2 pixels (k the kernel's side). Where an attack's shift is many noise deviations
wide, every noisy copy still carries it, and the vote has nothing to undo.

This script measures that ratio on the adversarial images an evaluation run saved, for the
noise settings given, so that an operator can see why SmoothGuard does or does not help on a
model before serving it:

    python benchmarks/patch_shift.py --eval var/eval --out var/patch_shift
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.core.noise import normalized_sigma
from smoothguard.core.settings import NOISE_UNITS
from smoothguard.evaluation.attack_runs import saved_attacks, saved_config
from smoothguard.evaluation.report import write_results
from smoothguard.synthetic.synthpope import load_benchmark

REPO = Path(__file__).resolve().parents[1]
# (unit, sigma): the default, and the same number read as pixels
SETTINGS = (("normalized", 0.15), ("pixel", 0.15))


def first_layer(model: VisionLanguageModel) -> torch.nn.Conv2d:
    """The first convolution that reads the RGB image (a ViT's patch embedding, a ResNet's
    stem): modules are registered in the order the towers apply them."""
    for module in model.model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:
            return module
    raise ValueError("the model has no Conv2d over the image; this diagnostic needs one")


def noise_std(weight: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """[C_out] standard deviation of each output channel under independent Gaussian noise of
    std sigmas[k] on input channel k (normalised space)."""
    per_input = weight.pow(2).sum(dim=(2, 3))  # [C_out, C_in]
    scale = torch.tensor(sigmas, dtype=weight.dtype).pow(2)
    return (per_input * scale).sum(dim=1).sqrt()


def shift_ratios(
    conv: torch.nn.Conv2d, clean: torch.Tensor, adversarial: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """[B, C_out, h, w] |first-layer shift of the attack| / noise deviation, per patch."""
    with torch.no_grad():
        shift = torch.nn.functional.conv2d(
            adversarial - clean, conv.weight, stride=conv.stride, padding=conv.padding
        )
    return shift.abs() / std.view(1, -1, 1, 1)


def measure(
    eval_dir: Path, model_path: Path, settings: tuple[tuple[str, float], ...]
) -> dict[str, Any]:
    saved = saved_config(eval_dir)
    bench = load_benchmark(saved["split"], saved["n_pope"], 1, saved["n_safety"])
    model = VisionLanguageModel.load(model_path)
    conv = first_layer(model)
    rows: list[dict[str, Any]] = []
    # EOT attacks are made to survive the noise; this asks about the others
    for run in saved_attacks(eval_dir, eot=False):
        adversarial = model.preprocess(list(run.images))
        clean = model.preprocess([it.image for it in bench[run.task]])
        for unit, sigma in settings:
            std = noise_std(conv.weight.detach(), normalized_sigma(sigma, unit, model.image_std))
            ratio = shift_ratios(conv, clean, adversarial, std)
            largest = ratio.flatten(1).max(dim=1).values
            rows.append(
                {
                    "attack": run.name,
                    "noise": f"{unit} {sigma:g}",
                    "largest_ratio_median": float(largest.median()),
                    "share_over_2": float((ratio > 2).float().mean()),
                }
            )
    return {"eval": str(eval_dir), "first_layer": list(conv.weight.shape), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| attack | noise | largest shift / noise std (median image) | share of shifts > 2 std |",
        "|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['attack']} | {r['noise']} | {r['largest_ratio_median']:.1f} "
            f"| {100 * r['share_over_2']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def parse_setting(text: str) -> tuple[str, float]:
    unit, _, sigma = text.partition(":")
    if unit not in NOISE_UNITS or not sigma:
        raise argparse.ArgumentTypeError(f"expected UNIT:SIGMA with UNIT in {NOISE_UNITS}")
    value = float(sigma)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"sigma must be positive, got {sigma}")
    return unit, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", type=Path, default=REPO / "var" / "eval", help="an eval OUT")
    parser.add_argument("--model-path", type=Path, default=REPO / "models" / "synthvlm")
    parser.add_argument(
        "--noise",
        type=parse_setting,
        action="append",
        help="UNIT:SIGMA, repeatable (default normalized:0.15 and pixel:0.15)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "var" / "patch_shift")
    args = parser.parse_args(argv)
    try:
        saved_config(args.eval)
    except ValueError as exc:
        parser.error(str(exc))
    result = measure(args.eval, args.model_path, tuple(args.noise or SETTINGS))
    write_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
