"""Render a profile and run tritonserver in the foreground, with the stub watchdog.

python build/serve.py --profile cpu [--grpc-port 8001 --http-port 8000 --metrics-port 8002]

By default this process supervises tritonserver: it forwards SIGTERM/SIGINT (Triton then
drains in-flight requests), exits with the server's status, and runs smoothguard.watchdog,
which reloads a model whose Python stub died (Triton 2.51 never restarts one itself). With a
restricted model-repository API the watchdog sends `smoothguard-admin-key: $ADMIN_KEY`.
`--no-watchdog` execs tritonserver instead (no supervisor process, no reloads).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))
sys.path.insert(0, str(REPO_ROOT / "build"))

from render import RenderError, render  # noqa: E402
from smoothguard.server import ServerPorts, TritonServer, server_environment  # noqa: E402
from smoothguard.watchdog import supervise  # noqa: E402


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
    parser.add_argument(
        "--no-watchdog",
        dest="watchdog",
        action="store_false",
        help="exec tritonserver directly, without the stub watchdog",
    )
    parser.add_argument("server_args", nargs="*", help="extra tritonserver flags (after --)")
    args = parser.parse_args(argv)
    try:
        repo = render(args.profile, REPO_ROOT / "var" / "repo" / args.profile, args.overrides)
    except RenderError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    ports = ServerPorts(http=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port)
    key = os.environ.get("ADMIN_KEY")
    server = TritonServer(
        repo,
        ports=ports,
        extra_args=args.server_args,
        watchdog=args.watchdog,
        admin_headers={"smoothguard-admin-key": key} if key else None,
    )
    try:
        command = server.command()
    except ValueError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    print(f"serve: gRPC :{ports.grpc}  HTTP :{ports.http}  metrics :{ports.metrics}", flush=True)
    if not args.watchdog:
        os.execve(command[0], command, server_environment())
    logging.basicConfig(level=logging.INFO, format="serve: %(message)s")
    return supervise(
        command,
        env=server_environment(),
        headers=server.admin_headers,
        drain_timeout_s=server.exit_timeout_s,
        stop_timeout_s=server.exit_timeout_s + 10,
    )


if __name__ == "__main__":
    raise SystemExit(main())
