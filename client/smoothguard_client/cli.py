"""`smoothguard` command line: ask the defended model, check the deployment.

Subcommands live in the SUBCOMMANDS registry: to add one, write `configure(parser)` and
`run(args, console) -> exit code` and register them with @subcommand. Errors are printed as
`error: <STATUS>: <message>`; exit 2 for invalid input, 1 for other failures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from smoothguard_client.client import DEFAULT_URL, POLICIES, SmoothGuardClient
from smoothguard_client.result import DefendedAnswer, SmoothGuardError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2
URL_ENV = "SMOOTHGUARD_URL"

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, Console], int]


@dataclass(frozen=True)
class Subcommand:
    help: str
    configure: Configure
    run: Run


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(name: str, help: str, configure: Configure) -> Callable[[Run], Run]:
    """Register `run` as `smoothguard <name>`."""

    def register(run: Run) -> Run:
        SUBCOMMANDS[name] = Subcommand(help, configure, run)
        return run

    return register


def add_connection_arguments(parser: argparse.ArgumentParser, *, timeout_s: float = 60.0) -> None:
    """--url, --timeout, --retries, --ssl, --root-certificates: shared by every subcommand."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"Triton gRPC address host:port (default: ${URL_ENV} or {DEFAULT_URL})",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=timeout_s,
        metavar="SECONDS",
        help=f"per-request deadline (default: {timeout_s:g})",
    )
    group.add_argument(
        "--retries",
        type=int,
        default=2,
        help="retries when the server is unreachable (default: 2)",
    )
    group.add_argument("--ssl", action="store_true", help="use a TLS channel")
    group.add_argument(
        "--root-certificates", metavar="PEM", help="CA bundle for --ssl (default: system)"
    )
    group.add_argument(
        "--header",
        type=parse_header,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="gRPC metadata sent with every call, repeatable (an auth token, an admin key)",
    )


def parse_header(text: str) -> tuple[str, str]:
    """NAME=VALUE -> (name, value), for --header; gRPC metadata keys are lower case."""
    name, sep, value = text.partition("=")
    name = name.strip().lower()
    if not sep or not name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def client_from_args(args: argparse.Namespace, **options: Any) -> SmoothGuardClient:
    return SmoothGuardClient(
        args.url,
        timeout_s=args.timeout,
        retries=args.retries,
        ssl=args.ssl,
        root_certificates=args.root_certificates,
        headers=dict(args.header) or None,
        **options,
    )


def print_json(value: Any) -> None:
    # Plain stdout, not rich: scripts parse it, so no colour or wrapping.
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def _yes_no(value: bool, *, alarm: str | None = None) -> Text:
    """'no', 'yes', or for alarming flags a red 'yes (<alarm>)'."""
    if value and alarm:
        return Text(f"yes ({alarm})", style="bold red")
    return Text("yes" if value else "no")


# ---------------------------------------------------------------- ask

DECISION_STYLES = {
    "answered": "green",
    "monitored": "yellow",
    "abstained": "yellow",
    "refused": "bold red",
}
DEFENSE_OPTIONS = (
    "sigma", "num_samples", "seed", "policy", "candidates", "adaptive", "certify", "answer_set",
)  # fmt: skip


def _configure_ask(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", metavar="PATH", help="image file (PNG, JPEG, ...)")
    source.add_argument(
        "--audio", metavar="PATH", help="PCM WAV file, at the audio model's rate (16 kHz)"
    )
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="question about it")
    parser.add_argument(
        "--sigma",
        type=float,
        help="noise level (default: server's; for audio, relative to the clip's RMS)",
    )
    parser.add_argument(
        "--num-samples", "-n", type=int, metavar="N", help="noisy samples (default: server's)"
    )
    parser.add_argument("--seed", type=int, help="noise seed, for reproducible answers")
    parser.add_argument("--max-new-tokens", type=int, metavar="N", help="answer length cap")
    parser.add_argument("--policy", choices=POLICIES, help="what to do on suspected attack")
    parser.add_argument("--candidates", action="store_true", help="also show every sampled answer")
    parser.add_argument(
        "--adaptive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stop after a few samples when they agree (default: the server's setting)",
    )
    parser.add_argument(
        "--certify",
        action="store_true",
        help="certified answer to a closed question (Cohen et al.'s CERTIFY; images only)",
    )
    parser.add_argument(
        "--answer-set",
        type=parse_answer_set,
        metavar="A,B,...",
        help="the answers the prompt allows, with --certify (default: the server's yes,no)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--undefended",
        action="store_true",
        help="ask the bare model (mllm, or mllm_audio) instead, for comparison",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="defended model name (default: smoothguard, or smoothguard_audio with --audio)",
    )
    add_connection_arguments(parser, timeout_s=120.0)


def parse_answer_set(text: str) -> tuple[str, ...]:
    """ "yes,no" -> ("yes", "no"), for --answer-set; the server checks the words themselves."""
    words = tuple(w.strip() for w in text.split(","))
    if not all(words):
        raise argparse.ArgumentTypeError(f"expected comma-separated answers, got {text!r}")
    return words


def render_answer(answer: DefendedAnswer, console: Console, *, candidates: bool = False) -> None:
    """The answer, then the evidence behind it (the vote), for a person to judge."""
    console.print(Panel(Text(answer.text), title="answer", title_align="left"))
    table = Table(title="evidence", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    style = DECISION_STYLES.get(answer.decision, "")
    table.add_row("decision", Text(answer.decision, style=style))
    if answer.reason:
        table.add_row("reason", Text(answer.reason))
    if answer.certified or answer.reason == "not_certified":
        radius = f" (L2 radius {answer.certified_radius:.4g}, pixel units)"
        table.add_row("certified", "yes" + radius if answer.certified else "no")
    majority, minority = answer.cluster_sizes
    table.add_row("agreement", f"{answer.agreement:.0%}")
    table.add_row("cluster sizes", f"{majority} / {minority}  (majority / the rest)")
    table.add_row("chosen index", str(answer.chosen_index))
    table.add_row(
        "original outvoted", _yes_no(answer.original_outvoted, alarm="likely adversarial input")
    )
    if answer.original_text != answer.text:
        table.add_row("original answer", Text(answer.original_text))
    table.add_row("tie", _yes_no(answer.tie))
    table.add_row("samples used", str(answer.num_samples_used))
    table.add_row("latency", f"{answer.latency_s:.2f} s")
    console.print(table)
    if candidates:
        rows = Table(title="candidates", title_justify="left")
        rows.add_column("#", justify="right")
        rows.add_column("answer")
        rows.add_column("note")
        for index, text in enumerate(answer.candidates):
            notes = []
            if index == 0:
                notes.append("unperturbed")
            if index == answer.chosen_index:
                notes.append("chosen")
            rows.add_row(str(index), Text(text), ", ".join(notes))
        console.print(rows)


@subcommand("ask", "ask the defended model a question about an image or a WAV file", _configure_ask)
def run_ask(args: argparse.Namespace, console: Console) -> int:
    if args.undefended:
        used = [f"--{o.replace('_', '-')}" for o in DEFENSE_OPTIONS if getattr(args, o)]
        if used:
            args.parser.error(f"{', '.join(used)} only apply to the defended model")
        return _run_undefended(args, console)
    options = {
        "sigma": args.sigma,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "policy": args.policy,
        "return_candidates": args.candidates,
        "adaptive": args.adaptive,
    }
    if args.certify or args.answer_set is not None:
        if args.audio is not None:
            args.parser.error("--certify and --answer-set apply to images only")
        if not args.certify:
            args.parser.error("--answer-set applies only with --certify")
        options |= {"certify": True, "answer_set": args.answer_set}
    endpoint = {} if args.model is None else {"audio_model" if args.audio else "model": args.model}
    with client_from_args(args, **endpoint) as client:
        if args.audio is not None:
            answer = client.ask_audio(args.audio, args.prompt, **options)
        else:
            answer = client.ask(args.image, args.prompt, **options)
    if args.json:
        print_json(answer.to_dict())
    else:
        render_answer(answer, console, candidates=args.candidates)
    return EXIT_OK


def _run_undefended(args: argparse.Namespace, console: Console) -> int:
    with client_from_args(args) as client:
        started = time.perf_counter()
        if args.audio is not None:
            model = client.undefended_audio_model
            text = client.ask_undefended_audio(
                args.audio, args.prompt, max_new_tokens=args.max_new_tokens
            )
        else:
            model = client.undefended_model
            text = client.ask_undefended(
                args.image, args.prompt, max_new_tokens=args.max_new_tokens
            )
        latency = time.perf_counter() - started
    if args.json:
        print_json({"text": text, "model": model, "latency_s": latency})
    else:
        console.print(Panel(Text(text), title=f"undefended answer ({model})", title_align="left"))
        console.print(f"latency: {latency:.2f} s")
    return EXIT_OK


# ---------------------------------------------------------------- health


def _configure_health(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--model", default="smoothguard", help="defended model name")
    add_connection_arguments(parser, timeout_s=10.0)


def render_health(health: dict[str, Any], console: Console) -> None:
    table = Table(title=f"smoothguard @ {health['url']}", show_header=False, title_justify="left")
    table.add_column("check", style="bold")
    table.add_column("status")

    def flag(ok: bool) -> Text:
        return Text("ok", style="green") if ok else Text("NOT READY", style="bold red")

    table.add_row("live", flag(health["live"]))
    table.add_row("server ready", flag(health["server_ready"]))
    for name, ready in health["models"].items():
        table.add_row(f"model {name}", flag(ready))
    table.add_row("server version", f"{health['server']} {health['version']}".strip())
    console.print(table)
    ready = health["ready"]
    console.print(
        Text("ready" if ready else "not ready", style="bold green" if ready else "bold red")
    )


@subcommand("health", "check that the server and every model are ready", _configure_health)
def run_health(args: argparse.Namespace, console: Console) -> int:
    with client_from_args(args, model=args.model) as client:
        health = client.health()
    if args.json:
        print_json(health)
    else:
        render_health(health, console)
    return EXIT_OK if health["ready"] else EXIT_FAILURE


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothguard",
        description="Client for the SmoothGuard defended vision-language endpoint (Triton gRPC).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(run=command.run, parser=sub)
    return parser


def report_error(status: str, message: str) -> int:
    print(f"error: {status}: {message}", file=sys.stderr)
    return EXIT_INVALID if status == "INVALID_ARGUMENT" else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_INVALID
    console = Console(highlight=False)
    try:
        return int(args.run(args, console))
    except SystemExit as exc:  # parser.error() from a subcommand's own checks
        return exc.code if isinstance(exc.code, int) else EXIT_INVALID
    except SmoothGuardError as exc:
        return report_error(exc.status, exc.message)
    except (ValueError, OSError) as exc:  # local validation: bad image, missing file
        return report_error("INVALID_ARGUMENT", str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
