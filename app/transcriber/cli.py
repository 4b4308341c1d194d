"""`audiohook-gateway transcribe`: the reference transcriber (needs the `transcribe` extra)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

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


def main(args: argparse.Namespace) -> int:
    from app import preflight
    from app.publisher.payload_crypto import parse_keys
    from app.redis.client import create_redis
    from app.tools.consume import settings_and_redis_url, stop_on_signals
    from app.transcriber.recognizer import load_recognizer

    target = settings_and_redis_url(args, "transcribe")
    if isinstance(target, int):
        return target
    settings, url = target
    try:
        recognizer = load_recognizer(args.recognizer)
    except (RuntimeError, ImportError, AttributeError) as exc:
        print(f"audiohook-gateway transcribe: {exc}", file=sys.stderr)
        return preflight.EXIT_CONFIG
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
