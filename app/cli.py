"""``audiohook-gateway``: serve | simulate | probe | consume | transcribe | bench."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
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


def _consume(args: argparse.Namespace) -> int:
    from app.streams import consumer

    return consumer.main(args)


def _transcribe(args: argparse.Namespace) -> int:
    from app.transcriber import cli  # PocketSphinx is imported only when a recogniser starts

    return cli.main(args)


def build_parser() -> argparse.ArgumentParser:
    from app import healthcheck
    from app.bench import calls, hostile
    from app.client import probe, simulate
    from app.streams import consumer
    from app.transcriber import cli as transcriber_cli

    parser = argparse.ArgumentParser(
        prog="audiohook-gateway",
        description="Genesys Cloud AudioHook gateway: sessions in, Redis Streams out.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    _add_env_file(serve)
    serve.add_argument("--host", default=None, help="override AUDIOHOOK_HOST")
    serve.add_argument("--port", type=int, default=None, help="override AUDIOHOOK_PORT")
    serve.add_argument(
        "--metrics-port", type=int, default=None, help="override AUDIOHOOK_METRICS_PORT"
    )
    serve.set_defaults(handler=_serve)

    simulate_parser = commands.add_parser(
        "simulate", help="stream calls to an AudioHook server the way Genesys Cloud does"
    )
    simulate.add_arguments(simulate_parser)
    simulate_parser.set_defaults(handler=lambda args: asyncio.run(simulate.run(args)))

    probe_parser = commands.add_parser(
        "probe", help="run the Genesys connection probe against any AudioHook server"
    )
    probe.add_arguments(probe_parser)
    probe_parser.set_defaults(handler=lambda args: asyncio.run(probe.run(args)))

    bench_parser = commands.add_parser(
        "bench", help="measure a gateway under concurrent real-time calls (figures, no asserts)"
    )
    calls.add_arguments(bench_parser)
    hostile.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=calls.run)

    consume_parser = commands.add_parser(
        "consume", help="write each session's audio from Redis to WAV files"
    )
    _add_env_file(consume_parser)
    consumer.add_arguments(consume_parser)
    consume_parser.set_defaults(handler=_consume)

    transcribe_parser = commands.add_parser(
        "transcribe",
        help="transcribe transcription-mode sessions and send the transcripts back "
        "(needs the `transcribe` extra)",
    )
    _add_env_file(transcribe_parser)
    transcriber_cli.add_arguments(transcribe_parser)
    transcribe_parser.set_defaults(handler=_transcribe)

    health_parser = commands.add_parser(
        "healthcheck",
        help="exit 0 when a client can reach this host's (or container's) listeners",
    )
    healthcheck.add_arguments(health_parser)
    health_parser.set_defaults(handler=healthcheck.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
