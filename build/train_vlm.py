"""Train the default vision-language model from scratch and ship it.

    python build/train_vlm.py                      # -> models/synthvlm (about 15 min, 2 cores)
    python build/train_vlm.py --out /tmp/m --steps 200   # a quick look

Writes the safetensors weights, tokenizer and processor, SHA256SUMS over every file, the
training record, and the accuracy table on SynthPOPE's test split (clean and with noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))

from smoothguard.synthvlm.evaluate import evaluate, write  # noqa: E402
from smoothguard.synthvlm.train import TrainConfig, train  # noqa: E402

CHECKSUMS = "SHA256SUMS"
RECORDS = {CHECKSUMS, "training.json", "evaluation.json", "evaluation.md", "README.md"}


def write_checksums(folder: Path) -> Path:
    """sha256 of every shipped file (not of the records written after training)."""
    lines = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name not in RECORDS):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}")
    target = folder / CHECKSUMS
    target.write_text("\n".join(lines) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "synthvlm")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--minutes", type=float, default=TrainConfig.max_minutes)
    parser.add_argument("--no-eval", action="store_true")
    args = parser.parse_args(argv)
    config = TrainConfig(seed=args.seed, steps=args.steps, max_minutes=args.minutes)
    record = train(args.out, config)
    record["config"] = dataclasses.asdict(config)
    write_checksums(args.out)
    (args.out / "training.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    if not args.no_eval:
        result = evaluate(args.out)
        write(result, args.out)
        print((args.out / "evaluation.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
