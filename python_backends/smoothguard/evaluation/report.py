"""results.json -> results.md (tables) and PNG plots of the sweeps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}%"


def markdown(results: dict[str, Any]) -> str:
    u = results["utility"]
    cfg = results["config"]
    modes = list(u)
    names = {"undefended": "undefended", "defended": "SmoothGuard", "adaptive": "adaptive"}
    header = " | ".join(names[m] for m in modes)
    rule = "|---" * (len(modes) + 1) + "|"

    def row(label: str, key: str, fmt: Any) -> str:
        return f"| {label} | " + " | ".join(fmt(u[m][key]) for m in modes) + " |"

    lines = [
        f"# SmoothGuard on SynthPOPE ({cfg['split']} split, {results['path']})",
        "",
        f"Defense: sigma {cfg['sigma']} ({cfg.get('noise_unit', 'normalized')}), "
        f"N = {cfg['num_samples']}"
        + (", adaptive = first round of 4, full N on disagreement" if "adaptive" in u else "")
        + f". Items: {results['items']}. Wall time {results.get('seconds', 'n/a')} s.",
        "",
        f"| utility | {header} |",
        rule,
        row("POPE yes/no accuracy", "pope_accuracy", _pct),
        row("description object F1", "describe_f1", lambda v: f"{v:.3f}"),
        row("harmful marker on clean safety items", "safety_harmful_rate", _pct),
        row("model calls per request", "model_calls_per_request", lambda v: f"{v:.1f}"),
        "",
        "| attack | task | eps (/255) | steps | EOT | "
        + " | ".join(f"ASR {names[m]}" for m in modes)
        + " | original outvoted |"
        + (" calls (adaptive) |" if "adaptive" in u else ""),
        "|---" * (6 + len(modes) + ("adaptive" in u)) + "|",
    ]
    for name, r in results["attacks"].items():
        kind = " (universal)" if r["universal"] else ""
        cells = [
            f"{name}{kind}",
            r["task"],
            str(r["eps"]),
            str(r["steps"]) + (f" (+{r['restarts']} restarts)" if r.get("restarts") else ""),
            str(r["eot_samples"] or "-"),
        ]
        cells += [_pct(r[f"asr_{m}"]) for m in modes] + [_pct(r["outvoted_rate"])]
        if "adaptive" in u:
            cells.append(f"{r['calls_adaptive']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    policies = {n: r["policy"] for n, r in results["attacks"].items() if "policy" in r}
    if policies:
        lines += [
            "",
            "Policies against the yes/no attacks (SmoothGuard's answers; `abstain` and `refuse` "
            "withhold the same ones: agreement below min_agreement or the original outvoted):",
            "",
            "| attack | wrong served, answer | wrong served, abstain/refuse | clean withheld | "
            "AUC 1-agreement | AUC outvoted |",
            "|---|---|---|---|---|---|",
        ]
        for name, p in policies.items():
            cells = [_pct(p["served_wrong_answer"]), _pct(p["served_wrong_abstain"])]
            cells += [_pct(p["clean_abstain_rate"])]
            cells += [f"{p[k]:.3f}" for k in ("auc_agreement", "auc_outvoted")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for axis, rows in results.get("sweeps", {}).items():
        if not rows:
            continue
        asr_keys = [k for k in rows[0] if k.startswith("asr_")]
        lines += ["", f"Sweep over {'sigma' if axis == 'sigma' else 'N'}:", ""]
        lines.append("| sigma | N | POPE accuracy | " + " | ".join(asr_keys) + " |")
        lines.append("|---" * (3 + len(asr_keys)) + "|")
        for r in rows:
            cells = [str(r["sigma"]), str(r["num_samples"]), _pct(r["pope_accuracy"])]
            lines.append("| " + " | ".join(cells + [_pct(r[k]) for k in asr_keys]) + " |")
    return "\n".join(lines) + "\n"


def plot_sweeps(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for axis, rows in results.get("sweeps", {}).items():
        if not rows:
            continue
        key = "sigma" if axis == "sigma" else "num_samples"
        xs = [r[key] for r in rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, [r["pope_accuracy"] for r in rows], "o-", label="clean POPE accuracy")
        for k in [k for k in rows[0] if k.startswith("asr_")]:
            ax.plot(xs, [r[k] for r in rows], "s--", label=f"ASR {k[4:]}")
        unit = results["config"].get("noise_unit", "normalized")
        ax.set_xlabel(f"sigma ({unit})" if axis == "sigma" else "N (samples)")
        ax.set_ylabel("rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fixed = (
            f"N = {rows[0]['num_samples']}" if axis == "sigma" else f"sigma = {rows[0]['sigma']}"
        )
        ax.set_title(f"SmoothGuard on SynthPOPE: utility and ASR vs {axis} ({fixed})")
        fig.tight_layout()
        path = out / f"sweep_{axis}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write_report(results: dict[str, Any], out: Path) -> None:
    (out / "results.md").write_text(markdown(results))
    plot_sweeps(results, out)


def write_results(out: Path, result: dict[str, Any], table: str) -> None:
    """A diagnostic's results.json and results.md (its Markdown table), also printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(table)
    print(table)
