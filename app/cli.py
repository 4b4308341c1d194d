"""``audiohook-gateway``: serve | simulate | probe | bench | consume | transcribe | healthcheck.

Each command imports its own modules, and only when it is the one run: `serve` and
`healthcheck` never import the Genesys-like client (`app.client`), the benchmarks
(`app.bench`, which need the dev-only `psutil` in places), the tools (`app.tools`) or the
reference transcriber (`app.transcriber`). The
container image ships without `app.bench`; `bench` there says so instead of failing on import.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from app import __version__


def _add_env_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="read AUDIOHOOK_* settings from this file too (the environment wins)",
    )


def _serve(args: argparse.Namespace) -> int:
    from app import preflight
    from app.server import run

    overrides = {
        key: value
        for key, value in (
            ("host", args.host),
            ("port", args.port),
            ("metrics_port", args.metrics_port),
        )
        if value is not None
    }
    try:
        settings = preflight.load_checked_settings(args.env_file, overrides)
    except preflight.ConfigProblems as exc:
        return preflight.report(exc.problems)
    problems = preflight.serve_problems(settings)
    if problems:
        return preflight.report(problems)
    return run(settings)


def _setup_serve(serve: argparse.ArgumentParser) -> None:
    _add_env_file(serve)
    serve.add_argument("--host", default=None, help="override AUDIOHOOK_HOST")
    serve.add_argument("--port", type=int, default=None, help="override AUDIOHOOK_PORT")
    serve.add_argument(
        "--metrics-port", type=int, default=None, help="override AUDIOHOOK_METRICS_PORT"
    )
    serve.set_defaults(handler=_serve)


def _setup_simulate(parser: argparse.ArgumentParser) -> None:
    from app.client import simulate

    simulate.add_arguments(parser)
    parser.set_defaults(handler=lambda args: asyncio.run(simulate.run(args)))


def _setup_probe(parser: argparse.ArgumentParser) -> None:
    from app.client import probe

    probe.add_arguments(parser)
    parser.set_defaults(handler=lambda args: asyncio.run(probe.run(args)))


def _setup_bench(parser: argparse.ArgumentParser) -> None:
    from app.bench import calls, hostile

    calls.add_arguments(parser)
    hostile.add_arguments(parser)
    parser.set_defaults(handler=calls.run)


def _setup_consume(parser: argparse.ArgumentParser) -> None:
    from app.tools import consume

    _add_env_file(parser)
    consume.add_arguments(parser)
    parser.set_defaults(handler=consume.main)


def _setup_transcribe(parser: argparse.ArgumentParser) -> None:
    from app.transcriber import cli  # PocketSphinx is imported only when a recogniser starts

    _add_env_file(parser)
    cli.add_arguments(parser)
    parser.set_defaults(handler=cli.main)


def _setup_healthcheck(parser: argparse.ArgumentParser) -> None:
    from app import healthcheck

    healthcheck.add_arguments(parser)
    parser.set_defaults(handler=healthcheck.run)


# name: (help, what adds the command's arguments and handler, importing its modules)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "serve": ("run the gateway", _setup_serve),
    "simulate": (
        "stream calls to an AudioHook server the way Genesys Cloud does",
        _setup_simulate,
    ),
    "probe": (
        "run the Genesys connection probe against any AudioHook server",
        _setup_probe,
    ),
    "bench": (
        "measure a gateway under concurrent real-time calls (figures, no asserts)",
        _setup_bench,
    ),
    "consume": ("write each session's audio from Redis to WAV files", _setup_consume),
    "transcribe": (
        "transcribe transcription-mode sessions and send the transcripts back "
        "(needs the `transcribe` extra)",
        _setup_transcribe,
    ),
    "healthcheck": (
        "exit 0 when a client can reach this host's (or container's) listeners",
        _setup_healthcheck,
    ),
}


def command_of(argv: Sequence[str]) -> str | None:
    """The command `argv` runs (the top-level options take no values), or None."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with the arguments of `command` only: the other commands are listed, with
    their help, but nothing of theirs is imported."""
    parser = argparse.ArgumentParser(
        prog="audiohook-gateway",
        description="Genesys Cloud AudioHook gateway: sessions in, Redis Streams out.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, setup) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        if name == command:
            setup(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = command_of(argv)
    try:
        parser = build_parser(command)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("app."):
            raise
        print(
            f"audiohook-gateway {command}: not part of this installation ({exc.name} is"
            " missing; the container image ships without the benchmarks: run them from a"
            " clone of the repository)",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
