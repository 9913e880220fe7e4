"""Render a profile and serve it in the foreground under smoothguard.serving.supervisor.

python build/serve.py --profile cpu [--bind 0.0.0.0] [--grpc-port 8001 --http-port 8000 ...]

The supervisor holds the public ports through the gateway (every request checked before
tritonserver sees it), reloads a model whose Python stub died, restarts tritonserver if it
exits, and on Ctrl-C / SIGTERM drains the requests in flight before it stops. The ports
listen on 127.0.0.1 unless --bind opens them. The model-repository API (load, unload, index)
and the trace, logging and shared-memory APIs need the header `smoothguard-admin-key: KEY`:
KEY is $ADMIN_KEY, or a random one printed at start.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "python_backends"))
sys.path.insert(0, str(REPO_ROOT / "build"))

from render import RenderError, render  # noqa: E402
from smoothguard.serving.server import ServerPorts, TritonServer, server_environment  # noqa: E402
from smoothguard.serving.supervisor import Supervisor, install_signal_handlers  # noqa: E402

# APIs an anonymous caller of `make serve` may not use; inference, health, metadata, model
# config and statistics stay open (perf_analyzer reads the last two).
RESTRICTED_APIS = "model-repository,shared-memory,trace,logging"


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
        "--bind",
        default=os.environ.get("SMOOTHGUARD_BIND", "127.0.0.1"),
        help="address of the public ports (default 127.0.0.1; 0.0.0.0 opens them)",
    )
    parser.add_argument(
        "--no-watchdog",
        dest="watchdog",
        action="store_false",
        help="do not reload models whose Python stub died",
    )
    parser.add_argument("server_args", nargs="*", help="extra tritonserver flags (after --)")
    args = parser.parse_args(argv)
    try:
        repo = render(args.profile, REPO_ROOT / "var" / "repo" / args.profile, args.overrides)
    except RenderError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    ports = ServerPorts(http=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port)
    key = os.environ.get("ADMIN_KEY") or secrets.token_urlsafe(18)
    shown = "$ADMIN_KEY" if os.environ.get("ADMIN_KEY") else key
    restricted = [
        f"--grpc-restricted-protocol={RESTRICTED_APIS}:smoothguard-admin-key={key}",
        f"--http-restricted-api={RESTRICTED_APIS}:smoothguard-admin-key={key}",
    ]
    if any("restricted" in arg for arg in args.server_args):
        restricted = []  # the caller chose its own restrictions
    server = TritonServer(
        repo,
        ports=ports,
        extra_args=[*restricted, *args.server_args],
        watchdog=args.watchdog,
        admin_headers={"smoothguard-admin-key": key},
    )
    try:
        supervisor = Supervisor(
            server.command(),
            bind=args.bind,
            env=server_environment(),
            headers=server.admin_headers,
            watchdog=args.watchdog,
            drain_timeout_s=server.exit_timeout_s,
            stop_timeout_s=server.exit_timeout_s + 5,
        )
    except (ValueError, OSError) as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    where = "all interfaces" if args.bind in ("0.0.0.0", "::") else args.bind
    print(
        f"serve: gRPC :{ports.grpc}  HTTP :{ports.http}  metrics :{ports.metrics} on {where}\n"
        f"serve: admin APIs ({RESTRICTED_APIS}) need the header smoothguard-admin-key: {shown}",
        flush=True,
    )
    logging.basicConfig(level=logging.INFO, format="serve: %(message)s")
    install_signal_handlers(supervisor)
    code = supervisor.run()
    print(f"serve: stopped (exit {code})", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
