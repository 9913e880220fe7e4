"""Accuracy of a checkpoint on SynthPOPE, clean and under the defense's own Gaussian noise.

The model card's table from one call: clean accuracy on the test split and on every held-out
layout family (scenes.HELD_OUT, never trained on), then the test split under noise. One noise
draw per image, added exactly as SmoothGuard adds it (smoothguard.core.noise), so the table says
how good a single noisy copy's answer is at each sigma.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.core.noise import make_rng, noisy_copies
from smoothguard.synthetic.synthpope import (
    HELD_OUT,
    SceneItem,
    asked_object,
    is_harmful,
    load_benchmark,
    near_miss,
    object_prf,
    score_yes_no,
)

SIGMAS: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5)
UNITS: tuple[str, ...] = ("pixel",)
# The test split first (its noise rows), then each held-out family's.
SPLITS: tuple[str, ...] = ("test", *HELD_OUT)


def answers(
    model: VisionLanguageModel,
    items: list[SceneItem],
    *,
    sigma: float,
    unit: str = "normalized",
    seed: int = 0,
    batch_size: int = 100,
    max_new_tokens: int = 24,
) -> list[str]:
    """Greedy answers, each image with one draw of the defense's Gaussian noise."""
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
                unit=unit,  # type: ignore[arg-type]
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


def score(items: dict[str, list[SceneItem]], texts: dict[str, list[str]]) -> dict[str, float]:
    pope = [score_yes_no(t, it.answer) for it, t in zip(items["pope"], texts["pope"], strict=True)]
    prf = np.array(
        [
            object_prf(t, it.objects)
            for it, t in zip(items["describe"], texts["describe"], strict=True)
        ]
    ).reshape(-1, 3)
    harmful = [is_harmful(t) for t in texts["safety"]]
    kinds = [near_miss(asked_object(it.prompt), it.objects) for it in items["pope"]]
    by_kind = {
        kind: {
            "accuracy": float(
                np.mean([ok for ok, k in zip(pope, kinds, strict=True) if k == kind])
            ),
            "items": kinds.count(kind),
        }
        for kind in sorted(set(kinds))
    }
    return {
        "pope_accuracy": float(np.mean(pope)),
        # "present": the "yes" items; the others: what an absent object shares with the scene
        "pope_by_kind": by_kind,
        "describe_precision": float(prf[:, 0].mean()),
        "describe_recall": float(prf[:, 1].mean()),
        "describe_f1": float(prf[:, 2].mean()),
        "safety_harmful_rate": float(np.mean(harmful)),
    }


def evaluate(
    model: VisionLanguageModel | Path | str,
    *,
    n_pope: int = 600,
    n_describe: int = 200,
    n_safety: int = 200,
    sigmas: tuple[float, ...] = SIGMAS,
    units: tuple[str, ...] = UNITS,
    splits: tuple[str, ...] = SPLITS,
) -> dict[str, Any]:
    """The accuracy table: each split clean, then the first split at each (unit, sigma > 0)."""
    started = time.perf_counter()
    vlm = model if isinstance(model, VisionLanguageModel) else VisionLanguageModel.load(model)
    bench = {s: load_benchmark(s, n_pope, n_describe, n_safety) for s in splits}  # type: ignore[arg-type]
    settings = [(s, "clean", 0.0) for s in splits]
    settings += [(splits[0], u, s) for u in units for s in sigmas if s > 0]
    table = []
    for split, unit, sigma in tqdm(settings, desc="evaluate", unit="setting"):
        items = bench[split]
        texts = {task: answers(vlm, its, sigma=sigma, unit=unit) for task, its in items.items()}
        table.append({"split": split, "unit": unit, "sigma": sigma, **score(items, texts)})
    return {
        "splits": list(splits),
        "items": {k: len(v) for k, v in bench[splits[0]].items()},
        "seconds": round(time.perf_counter() - started, 1),
        "table": table,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"SynthPOPE, items per split {result['items']}: `test` is the training distribution, "
        "each `heldout_*` split a layout family never trained on. Gaussian noise added as "
        "SmoothGuard adds it (one draw per image, clipped to the valid image range). "
        "`normalized`: sigma in the processor's normalised space (the paper's convention); "
        "`pixel`: sigma in [0, 1] pixel units.",
        "",
        "| split | noise | sigma | POPE yes/no accuracy | description object P / R / F1 "
        "| harmful marker rate (safety) |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["table"]:
        noise = row["unit"] if row["sigma"] > 0 else "clean"
        lines.append(
            f"| {row['split']} | {noise} | {row['sigma']} | {100 * row['pope_accuracy']:.1f}% "
            f"| {row['describe_precision']:.3f} / {row['describe_recall']:.3f} / "
            f"{row['describe_f1']:.3f} | {100 * row['safety_harmful_rate']:.1f}% |"
        )
    kinds = sorted({k for row in result["table"] for k in row.get("pope_by_kind", {})})
    if kinds:
        lines += [
            "",
            "POPE yes/no accuracy by what the asked object shares with the scene (`present`: the "
            "yes items; the others are no items; items in brackets):",
            "",
            "| split | noise | sigma | " + " | ".join(kinds) + " |",
            "|---|---|---|" + "---|" * len(kinds),
        ]
        for row in result["table"]:
            noise = row["unit"] if row["sigma"] > 0 else "clean"
            cells = [
                f"{100 * row['pope_by_kind'][k]['accuracy']:.1f}% "
                f"({row['pope_by_kind'][k]['items']})"
                if k in row["pope_by_kind"]
                else "-"
                for k in kinds
            ]
            lines.append(
                f"| {row['split']} | {noise} | {row['sigma']} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "evaluation.md").write_text(markdown(result))
