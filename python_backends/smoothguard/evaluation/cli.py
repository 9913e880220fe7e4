"""The command-line end that the image and the audio evaluation share: how to reach a served
endpoint, and flags over the smoke or default budget, with usage errors instead of tracebacks."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from smoothguard.evaluation.answering import ServedMismatch


def add_served_arguments(parser: argparse.ArgumentParser) -> None:
    """How to reach a served endpoint as production runs it, shared by both evaluations."""
    from smoothguard_client.cli import parse_header

    parser.add_argument("--concurrency", type=int, help="requests in flight with --served (8)")
    parser.add_argument(
        "--root-certificates", metavar="PEM", help="TLS to --served with this CA bundle"
    )
    parser.add_argument(
        "--header",
        dest="headers",
        type=parse_header,
        action="append",
        metavar="NAME=VALUE",
        help="gRPC metadata for --served, repeatable (auth token, admin key)",
    )


def run_from_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    config_type: Any,
    smoke: dict[str, Any],
    run: Callable[[Any], dict[str, Any]],
) -> int:
    """The end of both evaluation commands: flags over the smoke or default settings, then
    the run; a bad budget or a mismatched server is a usage error, not a traceback."""
    values: dict[str, Any] = dict(smoke) if args.smoke else {}
    for f in dataclasses.fields(config_type):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = tuple(given) if isinstance(given, list) else given
    values["sweeps"] = not args.no_sweeps
    if getattr(args, "no_adaptive", False):
        values["adaptive"] = False
    try:
        config = config_type(**values)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        results = run(config)
    except ServedMismatch as exc:
        parser.error(str(exc))
    print(f"wrote {config.out}/results.json and results.md in {results['seconds']} s")
    return 0
