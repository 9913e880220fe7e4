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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from smoothguard.adapters.mllm import VisionLanguageModel
from smoothguard.core.noise import noisy_copies
from smoothguard.core.pipeline import Copies, SmoothGuard
from smoothguard.core.settings import RequestOptions
from smoothguard.evaluation.answerers import Answer, InProcessAnswerer
from smoothguard.evaluation.answering import collect_answers, in_process_answerer
from smoothguard.evaluation.attack_runs import saved_attacks, saved_config
from smoothguard.evaluation.config import EvalConfig
from smoothguard.evaluation.report import write_results
from smoothguard.evaluation.scoring import Scorer, attack_success, fraction
from smoothguard.synthetic.synthpope import load_benchmark

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

    def copy_stream(self, pixel_values: np.ndarray, options: RequestOptions) -> Copies:
        return _RoundTripped(super().copy_stream(pixel_values, options), self.model)


class _RoundTripped:
    """Each round's copies through the round trip as they are drawn."""

    def __init__(self, stream: Copies, model: VisionLanguageModel) -> None:
        self.stream, self.model = stream, model

    def take(self, indices: range) -> np.ndarray:
        copies = self.stream.take(indices)
        return self.model.preprocess(list(reference_round_trip(copies))).numpy()


def eval_config(eval_dir: Path, sigma: float, seed: int) -> tuple[dict[str, Any], EvalConfig]:
    """The evaluation run's own settings, and ours on top; ValueError names what is wrong."""
    saved = saved_config(eval_dir)
    config = EvalConfig(
        out=eval_dir,
        sigma=sigma,
        noise_unit=saved.get("noise_unit", "normalized"),
        encoder=saved["encoder"],
        num_samples=saved["num_samples"],
        max_new_tokens=saved["max_new_tokens"],
        batch_size=saved["batch_size"],
        seed=seed,
    )
    return saved, config


def measure(saved: dict[str, Any], config: EvalConfig, model_path: Path) -> dict[str, Any]:
    eval_dir, sigma, seed = config.out, config.sigma, config.seed
    bench = load_benchmark(saved["split"], saved["n_pope"], 1, saved["n_safety"])
    model = VisionLanguageModel.load(model_path)
    served = in_process_answerer(config, model)
    settings = served.settings
    round_tripped = served.with_guard(
        RoundTripGuard(
            model,
            served.guard.generate,
            served.guard.embed,
            image_mean=model.image_mean,
            image_std=model.image_std,
            settings=settings,
        )
    )
    # EOT aims at the defense's own noise, not at this transformation
    attacks = saved_attacks(eval_dir, eot=False)

    def one_copy(noise: float) -> Callable[[np.ndarray, Sequence[Any]], list[Answer]]:
        """One copy, no vote, through the round trip (copy 1 of the defense's noise if any)."""

        def ask(images: np.ndarray, items: Sequence[Any]) -> list[Answer]:
            values = model.preprocess(list(images)).numpy()
            if noise > 0:
                values = noisy_copies(
                    values,
                    num_samples=2,
                    sigma=noise,
                    unit=settings.noise_unit,
                    clip=settings.clip,
                    mean=model.image_mean,
                    std=model.image_std,
                    rng=np.random.default_rng(seed),
                )[:, 1]
            return served.undefended(reference_round_trip(values), [it.prompt for it in items])

        return ask

    def voted(answerer: InProcessAnswerer) -> Callable[[np.ndarray, Sequence[Any]], list[Answer]]:
        return lambda images, items: collect_answers(
            answerer, images, items, config, mode="defended"
        )

    n = config.num_samples
    conditions = {
        "one copy": lambda images, items: served.undefended(images, [it.prompt for it in items]),
        "one copy, round trip": one_copy(0.0),
        f"one copy, round trip, sigma {sigma:g}": one_copy(sigma),
        f"SmoothGuard N={n}, sigma {sigma:g}": voted(served),
        f"SmoothGuard N={n}, sigma {sigma:g}, copies round-tripped": voted(round_tripped),
    }
    scorer = Scorer()
    pope = bench["pope"]
    rows: dict[str, dict[str, float]] = {}
    for name, ask in tqdm(conditions.items(), desc="conditions"):
        clean = ask(np.stack([it.image for it in pope]), pope)
        correct = [scorer.correct(it, a.text) for it, a in zip(pope, clean, strict=True)]
        row = {"pope_accuracy": fraction(correct)}
        for run in attacks:
            items = bench[run.task]
            answers = ask(run.images, items)
            row[f"asr_{run.name}"] = attack_success(scorer, run, items, answers, correct)
        rows[name] = row
    return {"eval": str(eval_dir), "sigma_unit": config.noise_unit, "seed": seed, "rows": rows}


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
    parser.add_argument("--sigma", type=float, default=0.15, help="in the evaluation's noise unit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "var" / "reference_transform")
    args = parser.parse_args(argv)
    try:
        saved, config = eval_config(args.eval, args.sigma, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    result = measure(saved, config, args.model_path)
    write_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
