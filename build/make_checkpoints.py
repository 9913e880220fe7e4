"""Build the tiny random-weight LLaVA-1.5 and Qwen2.5-VL checkpoints CI serves.

    python build/make_checkpoints.py                       # both -> var/checkpoints/<family>
    python build/make_checkpoints.py --family qwen2_5_vl --out /tmp/ck --seed 1

Nothing is downloaded: each is built from its configuration class with the real vision
geometry and toy widths (smoothguard.synthetic.families), in seconds and under 5 MB. Prints
each directory, its size and its model.safetensors' sha256 (the same for the same --seed).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))

from smoothguard.synthetic.families import FAMILIES, build_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=[*FAMILIES, "all"], default="all")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for family in FAMILIES if args.family == "all" else (args.family,):
        folder = build_checkpoint(family, args.out / family, seed=args.seed)
        size = sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        print(f"{folder}  {size / 2**20:.2f} MiB  model.safetensors sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
