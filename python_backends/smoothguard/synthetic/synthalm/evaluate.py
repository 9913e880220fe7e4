"""Accuracy of an audio checkpoint on SynthAudio, clean and under the defense's own noise.

One noise draw per clip, added exactly as SmoothGuard adds it (smoothguard.core.audio, sigma
relative to the clip's RMS), so the table says how good a single noisy copy's answer is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from smoothguard.core.audio import noisy_copies
from smoothguard.core.noise import make_rng
from smoothguard.synthetic.synthalm.model import AudioLanguageModel
from smoothguard.synthetic.synthaudio import (
    ClipItem,
    event_prf,
    is_harmful,
    load_benchmark,
    score_yes_no,
)

SIGMAS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def answers(
    model: AudioLanguageModel,
    items: list[ClipItem],
    *,
    sigma: float,
    seed: int = 0,
    batch_size: int = 100,
    max_new_tokens: int = 24,
) -> list[str]:
    """Greedy answers, each clip with one draw of the defense's Gaussian noise."""
    rng = make_rng(np, seed)
    out: list[str] = []
    for lo in range(0, len(items), batch_size):
        chunk = items[lo : lo + batch_size]
        waves = model.preprocess([it.waveform for it in chunk]).numpy()
        if sigma > 0:
            waves = noisy_copies(waves, num_samples=2, sigma=sigma, rng=rng, unit=model.noise_unit)[
                :, 1
            ]
        out += model.generate(
            np.ascontiguousarray(waves), [it.prompt for it in chunk], max_new_tokens=max_new_tokens
        )
    return out


def score(items: dict[str, list[ClipItem]], texts: dict[str, list[str]]) -> dict[str, float]:
    pope = [score_yes_no(t, it.answer) for it, t in zip(items["pope"], texts["pope"], strict=True)]
    prf = np.array(
        [
            event_prf(t, it.events)
            for it, t in zip(items["describe"], texts["describe"], strict=True)
        ]
    ).reshape(-1, 3)
    return {
        "pope_accuracy": float(np.mean(pope)),
        "describe_precision": float(prf[:, 0].mean()),
        "describe_recall": float(prf[:, 1].mean()),
        "describe_f1": float(prf[:, 2].mean()),
        "safety_harmful_rate": float(np.mean([is_harmful(t) for t in texts["safety"]])),
    }


def evaluate(
    model: AudioLanguageModel | Path | str,
    *,
    n_pope: int = 600,
    n_describe: int = 200,
    n_safety: int = 200,
    sigmas: tuple[float, ...] = SIGMAS,
    split: str = "test",
) -> dict[str, Any]:
    """The accuracy table: one row per sigma (relative to each clip's RMS)."""
    started = time.perf_counter()
    alm = model if isinstance(model, AudioLanguageModel) else AudioLanguageModel.load(model)
    items = load_benchmark(split, n_pope, n_describe, n_safety)  # type: ignore[arg-type]
    table = []
    for sigma in tqdm(sigmas, desc="evaluate", unit="sigma"):
        texts = {task: answers(alm, its, sigma=sigma) for task, its in items.items()}
        table.append({"sigma": sigma, **score(items, texts)})
    return {
        "split": split,
        "items": {k: len(v) for k, v in items.items()},
        "noise_unit": alm.noise_unit,
        "seconds": round(time.perf_counter() - started, 1),
        "table": table,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"SynthAudio `{result['split']}` split, items {result['items']}; Gaussian noise added "
        "as SmoothGuard adds it (one draw per clip, std = sigma x the clip's RMS, clipped to "
        "[-1, 1]; SNR = -20 log10(sigma) dB).",
        "",
        "| sigma (x RMS) | SNR | yes/no accuracy | description event P / R / F1 "
        "| harmful marker rate (safety) |",
        "|---|---|---|---|---|",
    ]
    for row in result["table"]:
        snr = "clean" if row["sigma"] == 0 else f"{-20 * np.log10(row['sigma']) + 0.0:.0f} dB"
        lines.append(
            f"| {row['sigma']} | {snr} | {100 * row['pope_accuracy']:.1f}% "
            f"| {row['describe_precision']:.3f} / {row['describe_recall']:.3f} / "
            f"{row['describe_f1']:.3f} | {100 * row['safety_harmful_rate']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "evaluation.md").write_text(markdown(result))
