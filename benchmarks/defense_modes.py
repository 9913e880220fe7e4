"""Every defense mode measured the same way on the default model: utility, attack success per
attack (transfer from the undefended model, and EOT through every random and learned step the
mode takes), what the abstain/refuse policies buy, and the cost per request.

Why: users choose a mode by these figures (docs/defense_modes.md). Each mode is one run of the
evaluation (smoothguard.evaluation.run.evaluate) with the same items and the same transfer
attacks (computed once, on the undefended model, and replayed for every mode); only the EOT
attacks, which target the mode itself, are computed per mode.

    python benchmarks/defense_modes.py --out docs/results/modes [--n-pope 60]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[1]

from smoothguard.evaluation.config import EvalConfig  # noqa: E402


class Mode(NamedTuple):
    name: str
    noise_unit: str
    sigma: float
    denoiser: bool = False

    def describe(self) -> str:
        den = " + denoiser" if self.denoiser else ""
        return f"{self.name}: vote{den}, sigma {self.sigma} ({self.noise_unit})"


MODES = (
    Mode("paper", "normalized", 0.15),
    Mode("pixel-0.25", "pixel", 0.25),
    Mode("pixel-0.5", "pixel", 0.5),
    Mode("denoised-0.25", "pixel", 0.25, denoiser=True),
    Mode("denoised-0.5", "pixel", 0.5, denoiser=True),
)
TRANSFER = ("pgd-8", "targeted-16", "universal-32")  # crafted on the undefended model


def mode_config(base: EvalConfig, mode: Mode, out: Path, denoiser: Path) -> EvalConfig:
    return replace(
        base,
        out=out / mode.name,
        noise_unit=mode.noise_unit,
        sigma=mode.sigma,
        denoiser=denoiser if mode.denoiser else None,
    )


def latency_ms(config: EvalConfig, items: int) -> float:
    """p50 of one defended request in process (noise, denoiser, N model rows, vote)."""
    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.core.settings import resolve_options
    from smoothguard.evaluation.answering import in_process_answerer
    from smoothguard.synthetic.synthpope import load_benchmark

    model = VisionLanguageModel.load(config.model_path)
    answerer = in_process_answerer(config, model)
    pope = load_benchmark(config.split, items, 0, 0)["pope"]
    pixels = model.preprocess([it.image for it in pope]).numpy()
    times = []
    warm = resolve_options(answerer.settings, sigma=config.sigma, num_samples=config.num_samples)
    answerer.guard.defend(pixels[0], pope[0].prompt, warm)  # first-call costs are not per request
    for index, (values, item) in enumerate(zip(pixels, pope, strict=True)):
        options = resolve_options(
            answerer.settings,
            sigma=config.sigma,
            num_samples=config.num_samples,
            seed=index,
            max_new_tokens=config.max_new_tokens,
        )
        started = time.perf_counter()
        answerer.guard.defend(values, item.prompt, options)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 1)


def table(rows: list[dict[str, Any]]) -> list[str]:
    def pct(value: float | None) -> str:
        return "n/a" if value is None or value != value else f"{100 * value:.1f}%"

    lines = [
        "| mode | POPE clean | ASR pgd-8 (transfer) | ASR eot-pgd-8 | ASR targeted-16 | "
        "ASR eot-targeted-16 | ASR universal-32 | wrong served pgd-8 / eot-pgd-8, abstain | "
        "clean withheld | AUC 1-agreement (pgd-8) | calls | ms / request |",
        "|---" * 12 + "|",
    ]
    for r in rows:
        a, p = r["attacks"], r["policy"]
        cells = [
            r["mode"],
            pct(r["pope_defended"]),
            pct(a["pgd-8"]),
            pct(a["eot-pgd-8"]),
            pct(a["targeted-16"]),
            pct(a["eot-targeted-16"]),
            pct(a["universal-32"]),
            f"{pct(p['pgd-8']['served_wrong_abstain'])} / "
            f"{pct(p['eot-pgd-8']['served_wrong_abstain'])}",
            pct(p["pgd-8"]["clean_abstain_rate"]),
            f"{p['pgd-8']['auc_agreement']:.3f}",
            f"{r['calls']:.0f}",
            str(r["ms_per_request"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def merged(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's modes over an earlier run's in the same folder (modes measured in parts),
    in MODES order."""
    earlier = json.loads(path.read_text())["rows"] if path.is_file() else []
    by_name = {r["mode"]: r for r in earlier} | {r["mode"]: r for r in rows}
    return [by_name[m.name] for m in MODES if m.name in by_name]


def report(result: dict[str, Any]) -> str:
    """results.md from results.json. The undefended line names the transfer attacks only: an
    EOT attack is crafted through one mode's noise, so its score on the bare model says how
    well that mode's attack transfers back, not how the undefended model fares."""
    rows, items = result["rows"], result["items"]
    undefended = {k: v for k, v in rows[0]["attacks_undefended"].items() if k in TRANSFER}
    lines = [
        f"`{result['command']}` ({result['machine']}; {items['pope']} POPE, {items['safety']} "
        f"safety, {items['describe']} describe items of the test split; "
        f"N = {result.get('num_samples', 10)}; transfer attacks 100 steps + 3 restarts on the "
        "undefended model; EOT 40 steps x 8 draws through the mode's noise and denoiser)",
        "",
        f"Undefended: POPE {100 * rows[0]['pope_undefended']:.1f}%, transfer ASR "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in undefended.items())
        + ".",
        "",
        *table(rows),
        "",
        *(f"- {r['description']} ({r['seconds']} s)" for r in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from smoothguard.evaluation.run import evaluate

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "modes")
    parser.add_argument("--denoiser", type=Path, default=REPO_ROOT / "models" / "denoiser")
    parser.add_argument("--n-pope", type=int, default=60)
    parser.add_argument("--n-safety", type=int, default=20)
    parser.add_argument("--n-describe", type=int, default=20)
    parser.add_argument("--latency-items", type=int, default=10)
    parser.add_argument("--modes", nargs="+", choices=[m.name for m in MODES])
    args = parser.parse_args(argv)
    if min(args.n_pope, args.n_safety, args.n_describe, args.latency_items) < 1:
        parser.error("item counts must be at least 1")
    base = EvalConfig(
        n_pope=args.n_pope,
        n_safety=args.n_safety,
        n_describe=args.n_describe,
        pope_eps=(8,),
        targeted_eps=(16,),
        sweeps=False,
        adaptive=False,
    )
    chosen = [m for m in MODES if not args.modes or m.name in args.modes]
    rows = []
    for index, mode in enumerate(chosen):
        config = mode_config(base, mode, args.out, args.denoiser)
        first = args.out / chosen[0].name / "attacks"
        if index and first.is_dir():  # the same transfer attacks, replayed
            for name in TRANSFER:
                if (first / name).is_dir():
                    shutil.copytree(first / name, config.out / "attacks" / name, dirs_exist_ok=True)
        print(f"== {mode.describe()}", flush=True)
        results = evaluate(config)
        attacks = results["attacks"]
        rows.append(
            {
                "mode": mode.name,
                "description": mode.describe(),
                "pope_undefended": results["utility"]["undefended"]["pope_accuracy"],
                "pope_defended": results["utility"]["defended"]["pope_accuracy"],
                "describe_f1_defended": results["utility"]["defended"]["describe_f1"],
                "attacks": {name: a["asr_defended"] for name, a in attacks.items()},
                "attacks_undefended": {name: a["asr_undefended"] for name, a in attacks.items()},
                "policy": {name: a["policy"] for name, a in attacks.items() if "policy" in a},
                "calls": results["utility"]["defended"]["model_calls_per_request"],
                "ms_per_request": latency_ms(config, args.latency_items),
                "seconds": results["seconds"],
            }
        )
    rows = merged(args.out / "results.json", rows)
    result = {
        "command": "python benchmarks/defense_modes.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, CPU only",
        "items": {"pope": args.n_pope, "safety": args.n_safety, "describe": args.n_describe},
        "num_samples": base.num_samples,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
