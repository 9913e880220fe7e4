"""Render a profile and run tritonserver in the foreground (signals go straight to it).

python build/serve.py --profile cpu [--grpc-port 8001 --http-port 8000 --metrics-port 8002]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))
sys.path.insert(0, str(REPO_ROOT / "build"))

from render import RenderError, render  # noqa: E402
from smoothguard.server import ServerPorts, TritonServer, server_environment  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("HTTP_PORT", 8000)))
    parser.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRPC_PORT", 8001)))
    parser.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", 8002))
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one profile setting",
    )
    parser.add_argument("server_args", nargs="*", help="extra tritonserver flags (after --)")
    args = parser.parse_args(argv)
    try:
        repo = render(args.profile, REPO_ROOT / "var" / "repo" / args.profile, args.overrides)
    except RenderError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    ports = ServerPorts(http=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port)
    server = TritonServer(repo, ports=ports, extra_args=args.server_args)
    command = server.command()
    print(f"serve: gRPC :{ports.grpc}  HTTP :{ports.http}  metrics :{ports.metrics}", flush=True)
    os.execve(command[0], command, server_environment())
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
