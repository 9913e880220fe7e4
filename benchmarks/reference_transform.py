"""How much of the paper's ASR drop comes from the reference code's image round trip?

The reference code's defended POPE run for LLaVA (GuangzhiSu/SmoothGuard,
image_eval/model_vqa_loader_new.py) adds the noise to the processor's normalised tensor, then
turns every copy back into an 8-bit image by clipping the *normalised* values to [0, 1] and
scaling them by 255, and gives that image to the processor again. A pixel below its channel's
mean comes back black and one above mean + std white: every copy, the unperturbed one too, is
thresholded before the model sees it. SmoothGuard as the paper describes it (and as we serve
it) gives the model the noisy tensors themselves.

This script measures what that round trip alone does (one copy, no vote) to SynthVLM's
answers on clean test items and on the adversarial images an evaluation run saved, so that a
reader can tell the transformation's share of a defended result from the vote's.

    python benchmarks/reference_transform.py --eval var/eval --out var/reference_transform
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from smoothguard.mllm import VisionLanguageModel
from smoothguard.synthpope import is_harmful, load_benchmark, score_yes_no

REPO = Path(__file__).resolve().parents[1]


def reference_round_trip(pixel_values: np.ndarray) -> np.ndarray:
    """Normalised [B, 3, H, W] -> uint8 [B, H, W, 3], as the reference code's tensor_to_pil:
    clip to [0, 1], times 255, truncated."""
    clipped = np.clip(pixel_values, 0.0, 1.0) * 255.0
    return clipped.astype(np.uint8).transpose(0, 2, 3, 1)


def answers(
    model: VisionLanguageModel,
    images: np.ndarray,
    prompts: list[str],
    *,
    round_trip: bool,
    sigma: float,
    rng: np.random.Generator,
    batch: int = 64,
) -> list[str]:
    """One greedy answer per image, through the reference round trip or straight."""
    out: list[str] = []
    for lo in range(0, len(images), batch):
        values = model.preprocess(list(images[lo : lo + batch])).numpy()
        if round_trip:
            noisy = values + sigma * rng.standard_normal(values.shape).astype(np.float32)
            values = model.preprocess(list(reference_round_trip(noisy))).numpy()
        out += model.generate(values, prompts[lo : lo + batch], max_new_tokens=24)
    return out


def measure(eval_dir: Path, model_path: Path, sigmas: list[float], seed: int) -> dict[str, Any]:
    config = json.loads((eval_dir / "results.json").read_text())["config"]
    bench = load_benchmark(config["split"], config["n_pope"], 1, config["n_safety"])
    model = VisionLanguageModel.load(model_path)
    rng = np.random.default_rng(seed)
    attacks = {}
    for folder in sorted((eval_dir / "attacks").iterdir()):
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest["spec"]["eot_samples"]:
            continue  # EOT aims at the defense's own noise, not at this transformation
        attacks[manifest["attack"]] = (manifest, np.load(folder / "images.npz")["images"])
    conditions = [("as served", False, 0.0)] + [
        (f"round trip, sigma {s:g}", True, s) for s in sigmas
    ]
    rows: dict[str, dict[str, float]] = {}
    for name, round_trip, sigma in tqdm(conditions, desc="conditions"):
        kw = {"round_trip": round_trip, "sigma": sigma, "rng": rng}
        pope = bench["pope"]
        prompts = [it.prompt for it in pope]
        clean = answers(model, np.stack([it.image for it in pope]), prompts, **kw)
        correct = [bool(score_yes_no(a, it.answer)) for a, it in zip(clean, pope, strict=True)]
        row = {"pope_accuracy": float(np.mean(correct))}
        for attack, (manifest, images) in attacks.items():
            items = bench[manifest["task"]]
            texts = answers(model, images, [it.prompt for it in items], **kw)
            if manifest["target"] == "flip":
                flags = [
                    not score_yes_no(t, it.answer)
                    for t, it, ok in zip(texts, items, correct, strict=True)
                    if ok
                ]
            else:
                flags = [bool(is_harmful(t)) for t in texts]
            row[f"asr_{attack}"] = float(np.mean(flags))
        rows[name] = row
    return {"eval": str(eval_dir), "sigma_unit": "normalized", "seed": seed, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    keys = list(next(iter(rows.values())))
    lines = [
        "| one copy, no vote | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
        "|---" * (1 + len(keys)) + "|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[k]:.1f}%" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", type=Path, default=REPO / "var" / "eval", help="an eval OUT")
    parser.add_argument("--model-path", type=Path, default=REPO / "models" / "synthvlm")
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.0, 0.15])
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
