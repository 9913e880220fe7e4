"""What the gateway costs a request: p50 at concurrency 1 through the public port vs
tritonserver's own loopback port, on the same server, alternating call by call.

Why: every request now passes the gateway (smoothguard.serving.gateway) before Triton; this is the
price of the checks that keep a tiny hostile request from killing a stub or the server.

    python benchmarks/gateway_overhead.py --out docs/results/gateway [--calls 100]
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "build"))

from render import render  # noqa: E402
from smoothguard.evaluation.report import write_results  # noqa: E402
from smoothguard.serving.server import ServerPorts, TritonServer  # noqa: E402
from smoothguard.synthetic.synthpope import generate_split  # noqa: E402


def _tensor(name: str, array: np.ndarray, wire: str) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(array.shape), wire)
    item.set_data_from_numpy(array)
    return item


def requests() -> dict[str, Callable[[], list[grpcclient.InferInput]]]:
    image = generate_split("test", 1)[0].image
    text = b"Describe the image."
    return {
        "embedder": lambda: [_tensor("TEXT", np.array([[b"a red circle"]], np.object_), "BYTES")],
        "mllm": lambda: [
            _tensor("IMAGE", image[None], "UINT8"),
            _tensor("PROMPT", np.array([[text]], np.object_), "BYTES"),
        ],
        "smoothguard": lambda: [
            _tensor("IMAGE", image, "UINT8"),
            _tensor("PROMPT", np.array([text], np.object_), "BYTES"),
        ],
    }


def measure(gateway: str, direct: str, calls: int) -> list[dict[str, float | str | int]]:
    clients = {
        "gateway": grpcclient.InferenceServerClient(gateway),
        "direct": grpcclient.InferenceServerClient(direct),
    }
    rows: list[dict[str, float | str | int]] = []
    for model, inputs in requests().items():
        times: dict[str, list[float]] = {name: [] for name in clients}
        for client in clients.values():
            for _ in range(5):  # warm
                client.infer(model, inputs())
        for i in range(calls):
            order = list(clients.items())
            for name, client in order if i % 2 else order[::-1]:
                start = time.perf_counter()
                client.infer(model, inputs())
                times[name].append(time.perf_counter() - start)
        p50 = {name: statistics.median(values) * 1000 for name, values in times.items()}
        rows.append(
            {
                "model": model,
                "calls": calls,
                "gateway_p50_ms": round(p50["gateway"], 3),
                "direct_p50_ms": round(p50["direct"], 3),
                "added_ms": round(p50["gateway"] - p50["direct"], 3),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "gateway")
    parser.add_argument("--calls", type=int, default=100, help="calls per model and port")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gateway-overhead-"))
    repo = render("cpu", work / "repo", ["overlays=[]"])
    with TritonServer(repo, ports=ServerPorts.free(), work_dir=work / "server") as server:
        found = re.search(r"-> tritonserver 127\.0\.0\.1:(\d+)", server.log_tail(1000))
        if found is None:
            raise SystemExit("the supervisor's log does not name tritonserver's gRPC port")
        rows = measure(f"127.0.0.1:{server.ports.grpc}", f"127.0.0.1:{found[1]}", args.calls)
    result = {
        "command": "python benchmarks/gateway_overhead.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "rows": rows,
    }
    lines = [
        f"`{result['command']}`",
        "",
        "| model | gateway p50 ms | direct p50 ms | added ms |",
        "|---|---|---|---|",
        *(
            f"| {r['model']} | {r['gateway_p50_ms']} | {r['direct_p50_ms']} | {r['added_ms']} |"
            for r in rows
        ),
    ]
    write_results(args.out, result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
