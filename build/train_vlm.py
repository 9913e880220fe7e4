"""Train the default vision-language model (SynthVLM) from scratch and ship it.

    python build/train_vlm.py                         # -> models/synthvlm (<= 30 min, 2 cores)
    python build/train_vlm.py --out /tmp/m --steps 300 --no-eval   # a quick look

Writes the safetensors weights, tokenizer and processor, SHA256SUMS over the files that make
up the checkpoint, training.json, and the model card's accuracy table (SynthPOPE's test split
clean and with pixel-space noise, and every held-out layout family clean) as evaluation.json /
evaluation.md. Deterministic under --seed when the run ends by its step count (it says so if
the --minutes guard stopped it first).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))

from smoothguard.synthetic.synthvlm.evaluate import evaluate, write  # noqa: E402
from smoothguard.synthetic.synthvlm.train import TrainConfig, train  # noqa: E402

CHECKSUMS = "SHA256SUMS"
# Records and documentation, not part of the checkpoint (rewritten without retraining).
RECORDS = frozenset({CHECKSUMS, "training.json", "evaluation.json", "evaluation.md", "README.md"})


def write_checksums(folder: Path) -> Path:
    """sha256sum-format digests of every checkpoint file (`sha256sum -c SHA256SUMS` works)."""
    for path in folder.iterdir():
        path.chmod(0o644)  # safetensors writes 0600; the checkpoint is meant to be shared
    lines = [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}"
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name not in RECORDS
    ]
    target = folder / CHECKSUMS
    target.write_text("\n".join(lines) + "\n")
    return target


def ship(
    out: Path,
    config: Any,
    train: Callable[[Path, Any], dict[str, Any]],
    evaluate: Callable[[Path], dict[str, Any]] | None,
    write: Callable[[dict[str, Any], Path], None],
    started: float,
) -> None:
    """Train into `out`, checksum it, evaluate it and keep the record: every shipped model."""
    record = train(out, config)
    record["config"] = dataclasses.asdict(config)
    write_checksums(out)
    if evaluate is not None:
        result = evaluate(out)
        write(result, out)
        record["eval_seconds"] = result["seconds"]
        print((out / "evaluation.md").read_text())
    record["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def positive_int(text: str) -> int:
    """argparse type: steps, batch sizes, threads and turns are counts of at least one."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an optional count (0 turns the thing off)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def share(text: str) -> float:
    """argparse type: a share of each batch, in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a noise scale or a time guard, above zero."""
    value = float(text)
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a loss term's weight (0 turns the term off)."""
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def recipe_parser(description: str, defaults: Any, out: Path) -> argparse.ArgumentParser:
    """The options both default models' builders share; each adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=positive_int, default=defaults.steps)
    parser.add_argument("--pretrain-steps", type=positive_int, default=defaults.pretrain_steps)
    parser.add_argument(
        "--batch-size", type=positive_int, default=defaults.batch_size, help="stage 2"
    )
    parser.add_argument(
        "--minutes",
        type=positive_float,
        default=defaults.max_minutes,
        help="wall-clock guard for the training loop",
    )
    parser.add_argument("--threads", type=positive_int, default=defaults.threads)
    parser.add_argument(
        "--noise-share",
        type=share,
        default=defaults.noise_share,
        help="stage 2: share of each batch trained on Gaussian-noised inputs (0: none)",
    )
    parser.add_argument(
        "--pretrain-noise-share",
        type=share,
        default=defaults.pretrain_noise_share,
        help="stage 1: the same for the encoder's own training",
    )
    parser.add_argument("--noise-max", type=positive_float, default=defaults.noise_max)
    parser.add_argument("--no-eval", action="store_true")
    return parser


def recipe_config(defaults: Any, args: argparse.Namespace, **own: Any) -> Any:
    """`defaults` with the shared options (recipe_parser) and the builder's `own` applied."""
    return dataclasses.replace(
        defaults,
        seed=args.seed,
        steps=args.steps,
        pretrain_steps=args.pretrain_steps,
        batch_size=args.batch_size,
        max_minutes=args.minutes,
        threads=args.threads,
        noise_share=args.noise_share,
        pretrain_noise_share=args.pretrain_noise_share,
        noise_max=args.noise_max,
        **own,
    )


def run_builder(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    defaults: Any,
    own: tuple[str, ...],
    train: Callable[[Path, Any], dict[str, Any]],
    evaluate: Callable[[Path], dict[str, Any]],
    write: Callable[[dict[str, Any], Path], None],
) -> int:
    """Parse, train, evaluate and ship: the whole of a builder once its parser has its `own`
    options (their attribute names, which are also the config's field names)."""
    args = parser.parse_args(argv)
    started = time.perf_counter()
    config = recipe_config(defaults, args, **{name: getattr(args, name) for name in own})
    ship(args.out, config, train, None if args.no_eval else evaluate, write, started)
    return 0


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    parser = recipe_parser(__doc__.split("\n\n")[0], defaults, REPO_ROOT / "models" / "synthvlm")
    parser.add_argument(
        "--turns",
        type=positive_int,
        default=defaults.turns,
        help="stage 2: questions packed per image row (batch-size rows of up to this many)",
    )
    return run_builder(parser, argv, defaults, ("turns",), train, evaluate, write)


if __name__ == "__main__":
    raise SystemExit(main())
