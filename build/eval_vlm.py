"""The model card's accuracy table of a vision-language checkpoint on SynthPOPE.

    python build/eval_vlm.py                                  # the shipped models/synthvlm
    python build/eval_vlm.py --model /models/llava-1.5-7b-hf --n-pope 120 --out /tmp/llava

Rows: the test split clean and at each pixel-space sigma (one noisy copy per image), and each
held-out layout family (heldout_background, heldout_placement, heldout_resolution) clean.
Prints the Markdown table and writes evaluation.json / evaluation.md to --out (default: a
fresh folder under out/, never the model folder, so its records stay as trained).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))

from smoothguard.synthetic.synthvlm.evaluate import SIGMAS, SPLITS, UNITS, evaluate, write  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "synthvlm")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "eval_vlm")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS))
    parser.add_argument("--n-pope", type=int, default=600)
    parser.add_argument("--n-describe", type=int, default=200)
    parser.add_argument("--n-safety", type=int, default=200)
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    parser.add_argument("--units", nargs="+", default=list(UNITS), choices=("pixel", "normalized"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = evaluate(
        args.model,
        n_pope=args.n_pope,
        n_describe=args.n_describe,
        n_safety=args.n_safety,
        sigmas=tuple(args.sigmas),
        units=tuple(args.units),
        splits=tuple(args.splits),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write(result, args.out)
    print((args.out / "evaluation.md").read_text())
    print(f"({result['seconds']} s; written to {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
