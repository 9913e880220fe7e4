"""Accuracy of a SynthVLM checkpoint on SynthPOPE, clean and under the defense's noise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from smoothguard.mllm import VisionLanguageModel
from smoothguard.noise import make_rng, noisy_copies
from smoothguard.synthpope import is_harmful, load_benchmark, object_prf, score_yes_no

SIGMAS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)


def answers(
    model: VisionLanguageModel,
    items: list[Any],
    *,
    sigma: float,
    unit: str = "normalized",
    seed: int = 0,
    batch_size: int = 64,
    max_new_tokens: int = 24,
) -> list[str]:
    """Greedy answers, each image with one draw of Gaussian noise (the defense's own noise)."""
    rng = make_rng(np, seed)
    out: list[str] = []
    for lo in range(0, len(items), batch_size):
        chunk = items[lo : lo + batch_size]
        pixels = model.preprocess([it.image for it in chunk]).numpy()
        if sigma > 0:
            pixels = noisy_copies(
                pixels,
                num_samples=2,
                sigma=sigma,
                unit=unit,
                clip=True,
                mean=model.image_mean,
                std=model.image_std,
                rng=rng,
            )[:, 1]
        out += model.generate(
            torch.from_numpy(np.ascontiguousarray(pixels)),
            [it.prompt for it in chunk],
            max_new_tokens=max_new_tokens,
        )
    return out


def score(items: dict[str, list[Any]], texts: dict[str, list[str]]) -> dict[str, float]:
    pope = [score_yes_no(t, it.answer) for it, t in zip(items["pope"], texts["pope"], strict=True)]
    f1 = [
        object_prf(t, it.objects)[2]
        for it, t in zip(items["describe"], texts["describe"], strict=True)
    ]
    return {
        "pope_accuracy": float(np.mean(pope)),
        "describe_f1": float(np.mean(f1)),
        "safety_harmful_rate": float(np.mean([is_harmful(t) for t in texts["safety"]])),
    }


def evaluate(
    model_path: Path | str,
    *,
    n_pope: int = 600,
    n_describe: int = 200,
    n_safety: int = 200,
    sigmas: tuple[float, ...] = SIGMAS,
    units: tuple[str, ...] = ("normalized",),
    split: str = "test",
) -> dict[str, Any]:
    model = VisionLanguageModel.load(model_path)
    items = load_benchmark(split, n_pope, n_describe, n_safety)  # type: ignore[arg-type]
    table = []
    for unit in units:
        for sigma in tqdm(sigmas, desc=f"evaluate ({unit})", unit="sigma"):
            if sigma == 0 and unit != units[0]:
                continue
            texts = {
                task: answers(model, its, sigma=sigma, unit=unit) for task, its in items.items()
            }
            table.append({"unit": unit, "sigma": sigma, **score(items, texts)})
    return {"split": split, "items": {k: len(v) for k, v in items.items()}, "table": table}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"SynthPOPE {result['split']} split, items {result['items']}; one noise draw per image.",
        "",
        "| noise unit | sigma | POPE yes/no accuracy | description object F1 "
        "| harmful marker rate |",
        "|---|---|---|---|---|",
    ]
    for row in result["table"]:
        lines.append(
            f"| {row['unit']} | {row['sigma']} | {100 * row['pope_accuracy']:.1f}% | "
            f"{row['describe_f1']:.3f} | {100 * row['safety_harmful_rate']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    (out / "evaluation.md").write_text(markdown(result))
