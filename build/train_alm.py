"""Train the default audio-language model (SynthALM) from scratch and ship it.

    python build/train_alm.py                         # -> models/synthalm (~10 min, 2 cores)
    python build/train_alm.py --out /tmp/a --steps 300 --no-eval   # a quick look

Writes the safetensors weights, tokenizer and processor, SHA256SUMS over the checkpoint files
(train_vlm.write_checksums), training.json, and the accuracy table on SynthAudio's test split
(clean and with noise) as evaluation.json / evaluation.md. Deterministic under --seed when the
run ends by its step count (it says so if the --minutes guard stopped it first).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))
sys.path.insert(0, str(REPO_ROOT / "build"))

from train_vlm import (  # noqa: E402
    non_negative_int,
    positive_int,
    recipe_parser,
    run_builder,
)

from smoothguard.synthetic.synthalm.evaluate import evaluate, write  # noqa: E402
from smoothguard.synthetic.synthalm.train import TrainConfig, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    parser = recipe_parser(__doc__.split("\n\n")[0], defaults, REPO_ROOT / "models" / "synthalm")
    parser.add_argument("--clips", type=positive_int, default=defaults.clips)
    parser.add_argument(
        "--near-miss-pairs",
        type=non_negative_int,
        default=defaults.near_miss_pairs,
        help="extra yes/no pairs per clip with a near-miss negative",
    )
    own = ("clips", "near_miss_pairs")
    return run_builder(parser, argv, defaults, own, train, evaluate, write)


if __name__ == "__main__":
    raise SystemExit(main())
