"""How much of the paper's ASR drop comes from the reference code's image round trip?

The reference code's defended POPE run for LLaVA (GuangzhiSu/SmoothGuard,
image_eval/model_vqa_loader_new.py) adds the noise to the processor's normalised tensor, then
turns every copy back into an 8-bit image by clipping the *normalised* values to [0, 1] and
scaling them by 255, and gives that image to the processor again. A pixel below its channel's
mean comes back black and one above mean + std white: every copy, the unperturbed one too, is
thresholded before the model sees it. SmoothGuard as the paper describes it (and as we serve
it) gives the model the noisy tensors themselves.

This script measures, on clean test items and on the adversarial images an evaluation run
saved, SynthVLM's answers from one copy with and without that round trip (and with noise),
and from SmoothGuard's vote with and without it, so that a reader can tell the
transformation's share of a defended result from the vote's.

    python benchmarks/reference_transform.py --eval var/eval --out var/reference_transform
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from smoothguard.embedder import SentenceEncoder
from smoothguard.evaluation.answerers import InProcessAnswerer
from smoothguard.evaluation.run import EvalConfig, collect_answers
from smoothguard.mllm import VisionLanguageModel
from smoothguard.pipeline import SmoothGuard
from smoothguard.settings import DefenseSettings, RequestOptions
from smoothguard.synthpope import is_harmful, load_benchmark, score_yes_no

REPO = Path(__file__).resolve().parents[1]


def reference_round_trip(pixel_values: np.ndarray) -> np.ndarray:
    """Normalised [B, 3, H, W] -> uint8 [B, H, W, 3], as the reference code's tensor_to_pil:
    clip to [0, 1], times 255, truncated."""
    clipped = np.clip(pixel_values, 0.0, 1.0) * 255.0
    return clipped.astype(np.uint8).transpose(0, 2, 3, 1)


class RoundTripGuard(SmoothGuard):
    """SmoothGuard whose copies take the reference code's round trip before the model."""

    def __init__(self, model: VisionLanguageModel, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model = model

    def noisy_copies(self, pixel_values: np.ndarray, options: RequestOptions) -> np.ndarray:
        copies = super().noisy_copies(pixel_values, options)
        return self.model.preprocess(list(reference_round_trip(copies))).numpy()


def single_copy(
    answerer: InProcessAnswerer, images: np.ndarray, prompts: list[str], sigma: float, seed: int
) -> list[str]:
    """One copy, no vote, through the round trip (noise first when sigma > 0)."""
    rng = np.random.default_rng(seed)
    values = answerer.model.preprocess(list(images)).numpy()
    values = values + sigma * rng.standard_normal(values.shape).astype(np.float32)
    return [a.text for a in answerer.undefended(reference_round_trip(values), prompts)]


def measure(eval_dir: Path, model_path: Path, sigma: float, seed: int) -> dict[str, Any]:
    saved = json.loads((eval_dir / "results.json").read_text())["config"]
    config = EvalConfig(
        out=eval_dir,
        sigma=sigma,
        num_samples=saved["num_samples"],
        max_new_tokens=saved["max_new_tokens"],
        batch_size=saved["batch_size"],
        seed=seed,
    )
    bench = load_benchmark(saved["split"], saved["n_pope"], 1, saved["n_safety"])
    model = VisionLanguageModel.load(model_path)
    settings = DefenseSettings(max_new_tokens=config.max_new_tokens)
    answerer = InProcessAnswerer(
        model, SentenceEncoder(saved["encoder"]), settings, config.max_new_tokens
    )
    served_guard = answerer.guard
    round_trip_guard = RoundTripGuard(
        model,
        served_guard.generate,
        served_guard.embed,
        image_mean=model.image_mean,
        image_std=model.image_std,
        settings=settings,
    )
    attacks = {}
    for folder in sorted((eval_dir / "attacks").iterdir()):
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest["spec"]["eot_samples"]:
            continue  # EOT aims at the defense's own noise, not at this transformation
        attacks[manifest["attack"]] = (manifest, np.load(folder / "images.npz")["images"])

    def ask(condition: str, images: np.ndarray, items: list[Any]) -> list[str]:
        prompts = [it.prompt for it in items]
        if condition == "one copy":
            return [a.text for a in answerer.undefended(images, prompts)]
        if condition == "one copy, round trip":
            return single_copy(answerer, images, prompts, 0.0, seed)
        if condition == f"one copy, round trip, sigma {sigma:g}":
            return single_copy(answerer, images, prompts, sigma, seed)
        answerer.guard = round_trip_guard if condition.endswith("round-tripped") else served_guard
        answers = collect_answers(answerer, images, items, config, mode="defended", desc=condition)
        return [a.text for a in answers]

    n = config.num_samples
    conditions = [
        "one copy",
        "one copy, round trip",
        f"one copy, round trip, sigma {sigma:g}",
        f"SmoothGuard N={n}, sigma {sigma:g}",
        f"SmoothGuard N={n}, sigma {sigma:g}, copies round-tripped",
    ]
    rows: dict[str, dict[str, float]] = {}
    for condition in tqdm(conditions, desc="conditions"):
        pope = bench["pope"]
        clean = ask(condition, np.stack([it.image for it in pope]), pope)
        correct = [bool(score_yes_no(a, it.answer)) for a, it in zip(clean, pope, strict=True)]
        row = {"pope_accuracy": float(np.mean(correct))}
        for attack, (manifest, images) in attacks.items():
            items = bench[manifest["task"]]
            texts = ask(condition, images, items)
            if manifest["target"] == "flip":
                flags = [
                    not score_yes_no(t, it.answer)
                    for t, it, ok in zip(texts, items, correct, strict=True)
                    if ok
                ]
            else:
                flags = [bool(is_harmful(t)) for t in texts]
            row[f"asr_{attack}"] = float(np.mean(flags))
        rows[condition] = row
    return {"eval": str(eval_dir), "sigma_unit": "normalized", "seed": seed, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    keys = list(next(iter(rows.values())))
    lines = [
        "| condition | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
        "|---" * (1 + len(keys)) + "|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[k]:.1f}%" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", type=Path, default=REPO / "var" / "eval", help="an eval OUT")
    parser.add_argument("--model-path", type=Path, default=REPO / "models" / "synthvlm")
    parser.add_argument("--sigma", type=float, default=0.15, help="normalized units")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "var" / "reference_transform")
    args = parser.parse_args(argv)
    result = measure(args.eval, args.model_path, args.sigma, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
