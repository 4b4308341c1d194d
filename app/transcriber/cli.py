"""`audiohook-gateway transcribe`: the reference transcriber (needs the `transcribe` extra)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

from app.transcriber.follow import DEFAULT_GROUP, Transcriber, TranscriberOptions
from app.transcriber.session import OFFSETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url", default=None, help="Redis URL (default: AUDIOHOOK_REDIS_URL)."
    )
    parser.add_argument("--group", default=DEFAULT_GROUP, help="Consumer group name.")
    parser.add_argument(
        "--consumer", default=None, help="Member name in the group (default: host-pid)."
    )
    parser.add_argument(
        "--all-modes", action="store_true",
        help="Transcribe Monitor integrations' sessions too (default: transcription mode only).",
    )  # fmt: skip
    parser.add_argument(
        "--from-start", action="store_true",
        help="When creating the group, also take sessions already in the events stream.",
    )  # fmt: skip
    parser.add_argument("--sessions", type=int, default=None, help="Exit after this many sessions.")
    parser.add_argument(
        "--offsets", choices=OFFSETS, default="stream",
        help="Timeline of transcript offsets: 'stream' (default: the client's, on which audio "
        "it reports discarded, during a pause too, takes its time) or 'received' (the audio "
        "received only, as the conformance suite's reference server counts).",
    )  # fmt: skip
    parser.add_argument(
        "--recognizer", default=None,
        help="module:Class of another recogniser (default: PocketSphinx, US English).",
    )  # fmt: skip


def _fail(message: str, code: int) -> int:
    print(f"audiohook-gateway transcribe: {message}", file=sys.stderr)
    return code


def main(args: argparse.Namespace) -> int:
    from app import preflight
    from app.publisher.payload_crypto import parse_keys
    from app.redis.client import create_redis
    from app.redis.embedded import running_server_url
    from app.tools.consume import stop_on_signals
    from app.transcriber.recognizer import load_recognizer

    env_file: Path | None = getattr(args, "env_file", None)
    try:
        settings = preflight.load_checked_settings(env_file)
    except preflight.ConfigProblems as exc:
        return preflight.report(exc.problems, "transcribe")
    url = args.redis_url or settings.redis_url
    if not url and settings.redis_embedded_dir is not None:
        url = running_server_url(settings.redis_embedded_dir)  # a local gateway's own Redis
    if not url:
        return _fail("no Redis to read: pass --redis-url or --env-file", preflight.EXIT_CONFIG)
    try:
        recognizer = load_recognizer(args.recognizer)
    except (RuntimeError, ImportError, AttributeError) as exc:
        return _fail(str(exc), preflight.EXIT_CONFIG)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    options = TranscriberOptions(
        group=args.group,
        consumer=args.consumer or f"{socket.gethostname()}-{os.getpid()}",
        all_modes=args.all_modes,
        start_id="0" if args.from_start else "$",
        offsets=args.offsets,
    )
    keys = parse_keys(settings.payload_encryption_keys.get_secret_value())

    async def transcribe() -> None:
        redis = create_redis(settings, url)
        stop = stop_on_signals()
        try:
            await Transcriber(redis, recognizer, options, keys).run(stop, args.sessions)
        finally:
            recognizer.close()
            await redis.aclose()

    asyncio.run(transcribe())
    return 0
