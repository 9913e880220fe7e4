"""The gpu profile's own models, served by a real tritonserver from the bundle, end to end.

    python3 build/gpu_smoke.py --bundle var/bundle/tritonserver-2.51.0-py3.12-x86_64.tar.xz \\
        [--device gpu|cpu] [--num-samples 10] [--duration-s 10] [--out var/gpu_smoke]

Needs nothing but the working tree and the bundle (build/bundle_tritonserver.py): it unpacks
the bundle into a fresh virtual environment that sees this interpreter's packages, renders
the gpu profile with mllm.runtime `hf` (the shipped models/synthvlm; the embedder is its text
stack, derived into the output folder, since the cpu profile's MiniLM does not fit the 64 MiB
a GPU machine is lent with) and serves it under smoothguard.serving.supervisor. Then:

1. seeded defended requests and undefended (mllm) requests, against the same pipeline run in
   this process on the CPU (smoothguard.core.pipeline): the answers must be equal;
2. p50/p90/p99 latency and throughput of defended requests at concurrency 1, 8 and 32, from
   a bounded client load loop (perf_analyzer's own closure does not fit the bundle);
3. per-step times from Triton's statistics over the load, and GPU and host memory.

Everything goes to one folder (results.json, results.md, the server log). --device gpu puts
the models on CUDA (torch) and the defense steps on CuPy where CuPy imports next to the
stub's numpy<2 (CuPy 14 needs numpy>=2: then NumPy, and results.json says so); --device cpu
is the same run on a CPU, as CI does it. Exits 1 when a check fails, 2 when it cannot run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MLLM = REPO_ROOT / "models" / "synthvlm"
ITEMS = 6  # correctness items (SynthPOPE test scenes)
CHECK_SAMPLES = 10  # N of the correctness requests, on every device
SEED = 1000
CONCURRENCY = (1, 8, 32)


class SmokeError(RuntimeError):
    """The smoke cannot run here (exit 2), as opposed to a failed check (exit 1)."""


# -- outside the environment: unpack, verify, make the virtual environment -------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(bundle: Path, target: Path) -> dict[str, Any]:
    """Verify the bundle (its .sha256 beside it, SHA256SUMS inside) and unpack it; its
    manifest."""
    sidecar = bundle.with_name(bundle.name + ".sha256")
    if sidecar.exists() and sidecar.read_text().split()[0] != _sha256(bundle):
        raise SmokeError(f"{bundle} does not match {sidecar.name}")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(target, filter="data")
    for line in (target / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        if _sha256(target / name) != digest:
            raise SmokeError(f"bundle file {name} does not match SHA256SUMS")
    manifest = json.loads((target / "MANIFEST.json").read_text())
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != python:
        raise SmokeError(f"the bundle is for Python {manifest['python']}, this is {python}")
    return manifest


def libpython() -> Path:
    """The machine's shared libpython, which the bundled stub embeds (not bundled on purpose)."""
    name = sysconfig.get_config_var("INSTSONAME") or ""
    path = Path(sysconfig.get_config_var("LIBDIR") or "") / name
    if not name.endswith(".so.1.0") or not path.exists():
        raise SmokeError(
            f"no shared libpython for Python {sys.version_info.major}.{sys.version_info.minor} "
            f"({path}): the Python backend stub needs it (e.g. Debian's libpython3.x)"
        )
    return path


def make_environment(bundle: Path, venv: Path) -> Path:
    """A venv whose site-packages holds the bundled tritonserver (where smoothguard.serving.server
    looks for it) and whose .pth puts the bundle's numpy<2 before this interpreter's packages,
    the project after them, and the bundle's fill-ins last. The Python backend stub finds
    this prefix through `python3` on PATH; its python interpreter ignores PYTHONPATH."""
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    site_dir = Path(purelib)
    for name in ("pytriton", "nvidia_pytriton.libs"):
        (site_dir / name).symlink_to(bundle / "site" / name, target_is_directory=True)
    host = [
        *site.getsitepackages(),
        *([site.getusersitepackages()] if site.ENABLE_USER_SITE else []),
    ]
    host = [p for p in host if Path(p).is_dir()]
    lines = [str(bundle / "first")]
    lines += [f"import site; site.addsitedir({p!r})" for p in host]
    lines += [str(REPO_ROOT / "python_backends"), str(REPO_ROOT / "client"), str(bundle / "last")]
    (site_dir / "smoothguard-smoke.pth").write_text("\n".join(lines) + "\n")
    return python


# -- inside the environment: serve, check, measure -------------------------------------------


def derive_text_encoder(vlm: Path, out: Path) -> Path:
    """The VLM's language model alone, as a Hugging Face checkpoint SentenceEncoder loads: a
    real (small, trained) text encoder that ships with the tree."""
    from safetensors.numpy import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((vlm / "config.json").read_text())["text_config"]
    config["architectures"] = ["LlamaModel"]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    weights = load_file(str(vlm / "model.safetensors"))
    # transformers 5 saves the language model under model.language_model.*; earlier
    # checkpoints (and LLaVA's own on the hub) under language_model.model.*
    for prefix in ("model.language_model.", "language_model.model."):
        text = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        if text:
            break
    else:
        raise SmokeError(f"{vlm} has no language-model weights to derive a text encoder from")
    save_file(text, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(vlm / name, out / name)
    return out


def devices(requested: str) -> dict[str, str]:
    """Where the models (torch) and the defense steps (CuPy/NumPy) run, and why."""
    if requested == "cpu":
        return {"model_device": "cpu", "device": "cpu", "defense_reason": "--device cpu"}
    import torch

    if not torch.cuda.is_available():
        raise SmokeError("--device gpu: torch sees no CUDA device")
    from smoothguard.core.xp import gpu_available

    if gpu_available():
        return {"model_device": "gpu", "device": "gpu", "defense_reason": "CuPy imports"}
    import numpy

    return {
        "model_device": "gpu",
        "device": "cpu",
        "defense_reason": (
            f"CuPy does not import next to numpy {numpy.__version__} (the bundled stub needs "
            "numpy<2; CuPy 14 needs numpy>=2): noise and aggregate on NumPy"
        ),
    }


def overrides(placement: dict[str, str], embedder: Path) -> list[str]:
    """The gpu profile with the shipped models in the `hf` runtime (render --set syntax)."""
    return [
        "mllm.runtime=hf",
        f"mllm.model_path={MLLM}",
        # float32 as the CPU reference the seeded answers are held to (the profile's float16
        # is for the TensorRT-LLM engines)
        "mllm.dtype=float32",
        # SynthVLM's own resolution (the profile's 336 is LLaVA-1.5's; a fixed-resolution
        # checkpoint refuses any other)
        "mllm.image_size=0",
        "mllm.instances=1",
        f"embedder.model_path={embedder}",
        f"device={placement['device']}",
        f"model_device={placement['model_device']}",
        # One generate() call for a request's copies (no in-flight batching to feed here).
        "steps.generate_fanout=batch",
        "defense.max_new_tokens=24",
    ]


def scenes(count: int) -> list[tuple[Any, str]]:
    """SynthPOPE test scenes, asked in turn about an object they hold, one they do not, and
    for a description (so that not every answer is "yes")."""
    import numpy as np

    from smoothguard.synthetic.synthpope import generate_split
    from smoothguard.synthetic.synthpope.questions import (
        DESCRIBE_PROMPT,
        negative_object,
        pope_prompt,
    )

    out = []
    for index, scene in enumerate(generate_split("test", count)):
        if index % 3 == 0:
            prompt = pope_prompt(*scene.objects[0])
        elif index % 3 == 1:
            rng = np.random.default_rng(index)
            prompt = pope_prompt(*negative_object(scene, "random", rng))
        else:
            prompt = DESCRIBE_PROMPT
        out.append((scene.image, prompt))
    return out


def _inputs(grpc: Any, image: Any, prompt: str, **extra: Any) -> list[Any]:
    """The tensors of one request; a batched `image` ([1, H, W, 3], for mllm) batches the
    prompt too."""
    import numpy as np

    prompts = np.array([prompt.encode()], dtype=np.object_).reshape((1,) * (image.ndim - 2))
    tensors = {"IMAGE": (image, "UINT8"), "PROMPT": (prompts, "BYTES")}
    kinds = {"SEED": (np.int64, "INT64"), "NUM_SAMPLES": (np.int32, "INT32")}
    kinds |= {"RETURN_CANDIDATES": (np.bool_, "BOOL")}
    for name, value in extra.items():
        dtype, triton = kinds[name]
        tensors[name] = (np.array([value], dtype=dtype), triton)
    out = []
    for name, (array, triton) in tensors.items():
        tensor = grpc.InferInput(name, list(array.shape), triton)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def check_answers(url: str, profile: dict[str, Any], placement: dict[str, str]) -> dict[str, Any]:
    """Seeded defended and undefended answers from the server against this process's CPU."""
    import tritonclient.grpc as grpc

    from smoothguard.adapters.embedder import SentenceEncoder
    from smoothguard.adapters.mllm import VisionLanguageModel
    from smoothguard.adapters.preprocess import ImagePreprocessor
    from smoothguard.core.pipeline import SmoothGuard
    from smoothguard.core.settings import DefenseSettings, resolve_options

    settings = DefenseSettings.from_profile(profile["defense"])
    vlm = VisionLanguageModel.load(MLLM, device="cpu")
    encoder = SentenceEncoder(profile["embedder"]["model_path"])
    pre = ImagePreprocessor.load(MLLM)
    guard = SmoothGuard(
        lambda copies, prompt, tokens: vlm.generate(copies, prompt, max_new_tokens=tokens),
        encoder.encode,
        image_mean=pre.mean,
        image_std=pre.std,
        settings=settings,
    )
    client = grpc.InferenceServerClient(url)
    items, failures = [], []
    for index, (image, prompt) in enumerate(scenes(ITEMS)):
        seed = SEED + index
        served = client.infer(
            "smoothguard",
            _inputs(grpc, image, prompt, SEED=seed, NUM_SAMPLES=CHECK_SAMPLES,
                    RETURN_CANDIDATES=True),
        )  # fmt: skip
        direct = client.infer("mllm", _inputs(grpc, image[None], prompt))
        options = resolve_options(settings, num_samples=CHECK_SAMPLES, seed=seed)
        reference = guard.defend(pre([image])[0], prompt, options)
        undefended = vlm.generate(vlm.preprocess([image]), prompt, settings.max_new_tokens)[0]
        item = {
            "prompt": prompt,
            "seed": seed,
            "defended": served.as_numpy("TEXT").reshape(-1)[0].decode(),
            "defended_cpu": reference.text,
            "agreement": float(served.as_numpy("AGREEMENT").reshape(-1)[0]),
            "agreement_cpu": reference.agreement,
            "undefended": direct.as_numpy("TEXT").reshape(-1)[0].decode(),
            "undefended_cpu": undefended,
        }
        items.append(item)
        if item["undefended"] != item["undefended_cpu"]:
            failures.append(f"item {index}: undefended {item['undefended']!r} != CPU's")
        # CuPy draws other noise than NumPy for the same seed: then only votes the CPU found
        # unanimous must come out the same.
        strict = placement["device"] == "cpu" or reference.agreement == 1.0
        if strict and item["defended"] != item["defended_cpu"]:
            failures.append(f"item {index}: defended {item['defended']!r} != CPU's")
    same = sum(i["defended"] == i["defended_cpu"] for i in items)
    return {"items": items, "defended_equal": same, "failures": failures, "count": len(items)}


def load(url: str, num_samples: int, duration_s: float) -> list[dict[str, Any]]:
    """Defended requests (unseeded: fresh noise, as real traffic) at each concurrency."""
    image, prompt = scenes(1)[0]
    return [
        level(url, image, prompt, num_samples, concurrency, duration_s)
        for concurrency in CONCURRENCY
    ]


def level(
    url: str, image: Any, prompt: str, num_samples: int, concurrency: int, duration_s: float
) -> dict[str, Any]:
    """`concurrency` client threads in a closed loop for `duration_s` after a short warm-up:
    latency percentiles and throughput of what finished inside the window."""
    import numpy as np
    import tritonclient.grpc as grpc

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    measuring = threading.Event()
    warmup = min(2.0, duration_s / 2)
    stop_at = time.perf_counter() + warmup + duration_s

    def worker() -> None:
        client = grpc.InferenceServerClient(url)
        inputs = _inputs(grpc, image, prompt, NUM_SAMPLES=num_samples)
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                client.infer("smoothguard", inputs, client_timeout=120)
            except Exception as exc:  # noqa: BLE001 - counted, not fatal to the loop
                with lock:
                    errors.append(str(exc))
                continue
            if measuring.is_set():
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    measuring.set()
    began = time.perf_counter()
    for thread in threads:
        thread.join(timeout=duration_s + 180)
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1e3
    percentiles = {
        f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 90, 99)
    }
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "throughput_rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        **percentiles,
    }


def statistics(http_port: int) -> dict[str, dict[str, int]]:
    url = f"http://127.0.0.1:{http_port}/v2/models/stats"
    with urllib.request.urlopen(url, timeout=30) as response:
        stats = json.loads(response.read())
    out = {}
    for model in stats["model_stats"]:
        inference = model["inference_stats"]
        out[model["name"]] = {
            "requests": int(inference["success"]["count"]),
            "executions": int(model["execution_count"]),
            **{f"{k}_ns": int(inference[k]["ns"]) for k in (
                "success", "queue", "compute_input", "compute_infer", "compute_output")},
        }  # fmt: skip
    return out


def step_times(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean milliseconds per request of each model over the load phase."""
    out = {}
    for name, end in sorted(after.items()):
        start = before.get(name, {})
        requests = end["requests"] - start.get("requests", 0)
        if requests <= 0:
            continue
        row = {"requests": requests, "executions": end["executions"] - start.get("executions", 0)}
        for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            row[f"{key}_ms"] = (end[f"{key}_ns"] - start.get(f"{key}_ns", 0)) / requests / 1e6
        out[name] = row
    return out


def memory(server_pid: int, model_device: str) -> dict[str, Any]:
    import psutil

    tree = [server_pid]
    with contextlib.suppress(psutil.Error):
        tree += [p.pid for p in psutil.Process(server_pid).children(recursive=True)]
    rss = 0
    for pid in tree:
        with contextlib.suppress(psutil.Error):
            rss += psutil.Process(pid).memory_info().rss
    out: dict[str, Any] = {"host_rss_mib": rss / 2**20, "processes": len(tree)}
    if model_device != "gpu":
        return out
    if shutil.which("nvidia-smi"):
        query = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        used = [line.split(",") for line in query.strip().splitlines() if line.strip()]
        mine = [(int(pid), int(mib)) for pid, mib in used if int(pid) in tree]
        out["gpu_mib_by_process"] = dict(mine)
        out["gpu_mib_server"] = sum(mib for _, mib in mine)
    import torch

    free, total = torch.cuda.mem_get_info()
    out["gpu_used_mib_device"] = (total - free) / 2**20  # includes this process's context
    out["gpu_total_mib"] = total / 2**20
    return out


def serve_and_check(args: argparse.Namespace) -> int:
    import render
    from smoothguard.serving.server import ServerPorts, TritonServer, tritonserver_binary

    out: Path = args.out
    binary = tritonserver_binary()
    if (out / "bundle") not in binary.resolve().parents:
        raise SmokeError(f"tritonserver resolved to {binary}, not the bundle's")
    placement = devices(args.device)
    embedder = derive_text_encoder(MLLM, out / "embedder")
    repo = render.render("gpu", out / "repo", overrides(placement, embedder))
    profile = json.loads((repo / "profile.json").read_text())
    extra = []
    if placement["model_device"] == "gpu":
        pool = profile["server"]["cuda_memory_pool_byte_size"]
        extra.append(f"--cuda-memory-pool-byte-size=0:{pool}")
    server = TritonServer(
        repo,
        ports=ServerPorts.free(),
        work_dir=out / "server",
        log_path=out / "tritonserver.log",
        extra_args=extra,
    )
    results: dict[str, Any] = {"requested": args.device, **placement}
    results["tritonserver"] = str(binary.resolve())
    results["num_samples"] = args.num_samples
    started = time.perf_counter()
    server.start(timeout_s=args.start_timeout_s)
    results["ready_s"] = time.perf_counter() - started
    try:
        url = f"127.0.0.1:{server.ports.grpc}"
        results["answers"] = check_answers(url, profile, placement)
        before = statistics(server.ports.http)
        results["load"] = load(url, args.num_samples, args.duration_s)
        results["steps"] = step_times(before, statistics(server.ports.http))
        assert server.process is not None
        results["memory"] = memory(server.process.pid, placement["model_device"])
    finally:
        results["stop_status"] = server.stop()
    failures = list(results["answers"]["failures"])
    failures += [f"load c={r['concurrency']}: {r['errors']} errors" for r in results["load"]
                 if r["errors"] or not r["requests"]]  # fmt: skip
    results["failures"] = failures
    results["passed"] = not failures
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(report(results))
    print(report(results))
    return 0 if not failures else 1


def report(results: dict[str, Any]) -> str:
    answers = results["answers"]
    lines = [
        f"# GPU smoke (--device {results['requested']}): "
        f"{'passed' if results['passed'] else 'FAILED'}",
        "",
        f"models on {results['model_device']}, defense steps on {results['device']} "
        f"({results['defense_reason']})",
        f"server ready in {results['ready_s']:.1f} s",
        f"answers: {answers['count']} items, defended equal to the CPU's: "
        f"{answers['defended_equal']}/{answers['count']}",
        "",
        f"load: defended requests, N={results['num_samples']}",
        "",
        "| concurrency | requests | p50 ms | p90 ms | p99 ms | req/s | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["load"]:
        cells = [f"{r[k]:.1f}" if r[k] is not None else "-" for k in ("p50_ms", "p90_ms", "p99_ms")]
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {' | '.join(cells)} | "
            f"{r['throughput_rps']:.1f} | {r['errors']} |"
        )
    lines += ["", "| model | requests | queue ms | infer ms | total ms |", "|---|---|---|---|---|"]
    for name, s in results["steps"].items():
        lines.append(
            f"| {name} | {s['requests']} | {s['queue_ms']:.2f} | {s['compute_infer_ms']:.2f} | "
            f"{s['success_ms']:.2f} |"
        )
    lines += ["", f"memory: {json.dumps(results['memory'])}"]
    lines += [f"FAIL {f}" for f in results["failures"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the .tar.xz of the bundle")
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--num-samples", type=int, default=10, help="N of the load requests")
    parser.add_argument("--duration-s", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--start-timeout-s", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "gpu_smoke")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    try:
        if args.inside:
            sys.path.insert(0, str(REPO_ROOT / "build"))
            return serve_and_check(args)
        libpython()
        args.out.mkdir(parents=True, exist_ok=True)
        unpack(args.bundle.resolve(), args.out / "bundle")
        python = make_environment(args.out / "bundle", args.out / "venv")
    except SmokeError as exc:
        print(f"gpu_smoke: error: {exc}", file=sys.stderr)
        return 2
    command = [str(python), str(Path(__file__).resolve()), *(argv or sys.argv[1:]), "--inside"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
