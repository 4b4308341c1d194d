"""`audiohook-gateway simulate`: one or many concurrent Genesys-like calls against a server.

`simulate(configs)` runs the sessions concurrently on one shared pacer and returns their
results; `summarize(results)` turns them into the short human summary the CLI prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import uuid
from collections.abc import Sequence
from typing import TextIO

from app.client.audio import AudioSource, tone_source, wav_source
from app.client.pacing import Pacer
from app.client.session import (
    LAYOUTS,
    SessionConfig,
    SessionResult,
    media_offers,
    run_session,
)
from app.client.tls import private_ca_context

DEFAULT_URI = "ws://127.0.0.1:8080/api/v1/audiohook/ws"


async def simulate(
    configs: Sequence[SessionConfig], *, pacer: Pacer | None = None
) -> list[SessionResult]:
    """Run the sessions concurrently (one task each, one shared pacer)."""
    shared = pacer or Pacer()
    return list(await asyncio.gather(*(run_session(config, pacer=shared) for config in configs)))


def _ms(values: Sequence[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"median {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )


def summarize(results: Sequence[SessionResult], *, max_problems: int = 10) -> str:
    count = len(results)
    opened = [r for r in results if r.opened]
    closed = [r for r in results if r.closed]
    lines = [
        f"sessions: {count}, connected {sum(r.connected for r in results)}, "
        f"opened {len(opened)}, closed {len(closed)}, ok {sum(r.ok for r in results)}",
        f"opened latency: {_ms([r.open_seconds for r in opened if r.open_seconds is not None])}",
        f"frames sent: {sum(r.frames_sent for r in results)} "
        f"({sum(r.bytes_sent for r in results)} bytes)",
        f"pongs: {sum(r.pongs for r in results)}/{sum(r.pings for r in results)} pings, "
        f"events received: {sum(len(r.events) for r in results)}, "
        f"pauses {sum(r.pauses for r in results)}, resumes {sum(r.resumes for r in results)}",
        f"close: {_close_results(results)}",
    ]
    if count == 1 and opened and opened[0].selected_media is not None:
        lines.insert(2, f"media: {json.dumps(opened[0].selected_media)}")
    problems = [(r.session_id, f) for r in results for f in r.findings if f.severity == "error"]
    for session_id, finding in problems[:max_problems]:
        prefix = f"{session_id[:8]}: " if count > 1 else ""
        lines.append(f"  x {prefix}{finding.text}")
    if len(problems) > max_problems:
        lines.append(f"  ... {len(problems) - max_problems} more problems")
    return "\n".join(lines)


def _close_results(results: Sequence[SessionResult]) -> str:
    tally: dict[str, int] = {}
    for result in results:
        if result.closed:
            key = f"closed after close {result.close_reason}"
        elif result.close_reason:
            key = f"no closed after close {result.close_reason}"
        elif not result.connected:
            key = "not connected"
        else:
            key = "socket ended"
        tally[key] = tally.get(key, 0) + 1
    return ", ".join(f"{n} {key}" for key, n in sorted(tally.items()))


# --- CLI -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Place simulated Genesys Cloud AudioHook calls against a server."
    parser.add_argument("--uri", default=DEFAULT_URI, help=f"AudioHook endpoint ({DEFAULT_URI})")
    parser.add_argument("--api-key", required=True, help="API key of the integration")
    parser.add_argument(
        "--client-secret", help="base64 client secret; omit to send an unsigned upgrade"
    )
    parser.add_argument("--org-id", help="organization id (default: a random UUID)")
    parser.add_argument("--wav", help="8000 Hz PCM16 or µ-law WAV to stream (default: 1 kHz tone)")
    parser.add_argument(
        "--seconds",
        type=float,
        help="audio length; the WAV is cut or looped to it (default: 10 s, or the whole WAV)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="act as the Genesys connection probe (null conversation id, no audio)",
    )
    parser.add_argument(
        "--channels",
        choices=LAYOUTS,
        default="stereo",
        help="offers: stereo = [ext,int],[ext],[int]; inverted = [int,ext],[int],[ext]; "
        "external / internal = that channel only",
    )
    parser.add_argument("--format", choices=("PCMU", "L16"), default="PCMU")
    pacing = parser.add_mutually_exclusive_group()
    pacing.add_argument(
        "--realtime",
        dest="realtime",
        action="store_true",
        default=True,
        help="pace audio in real time (default)",
    )
    pacing.add_argument(
        "--fast", dest="realtime", action="store_false", help="send audio as fast as possible"
    )
    parser.add_argument("--language", default="en-US", help="language of the open (en-US)")
    parser.add_argument("--sessions", type=int, default=1, help="concurrent calls (1)")
    parser.add_argument("--open-timeout", type=float, default=5.0, help="seconds for opened (5)")
    parser.add_argument("--close-timeout", type=float, default=10.0, help="seconds for closed (10)")
    parser.add_argument("--ping-interval", type=float, default=5.0, help="seconds between pings")
    parser.add_argument("--json", action="store_true", help="print one JSON result per session")
    parser.add_argument(
        "--ca-file",
        help="PEM file of a private CA to verify a wss:// endpoint against (a staging "
        "endpoint); default: the system's CAs",
    )


def build_configs(args: argparse.Namespace) -> list[SessionConfig]:
    source: AudioSource | None = None
    if not args.probe:
        if args.wav:
            source = wav_source(args.wav, args.seconds)
        else:
            source = tone_source(10.0 if args.seconds is None else args.seconds)
    organization_id = args.org_id or str(uuid.uuid4())
    context: ssl.SSLContext | None = None
    if args.ca_file:
        try:
            context = private_ca_context(args.ca_file)
        except OSError as exc:  # ssl.SSLError too: the file holds no certificate
            raise OSError(f"--ca-file {args.ca_file}: {exc.strerror or exc}") from exc
    configs = []
    for _ in range(max(1, args.sessions)):
        if args.probe:
            config = SessionConfig.probe(args.uri, args.api_key, args.client_secret)
        else:
            config = SessionConfig(
                uri=args.uri,
                api_key=args.api_key,
                client_secret=args.client_secret,
                language=args.language,
                source=source,
                realtime=args.realtime,
                record_frames=False,
            )
        config.organization_id = organization_id
        config.offers = media_offers(args.format, args.channels)
        config.open_timeout = args.open_timeout
        config.close_timeout = args.close_timeout
        config.ping_interval = args.ping_interval
        config.ssl_context = context
        configs.append(config)
    return configs


async def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    try:
        configs = build_configs(args)
    except (OSError, ValueError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    results = await simulate(configs)
    if args.json:
        for result in results:
            stream.write(json.dumps(result.to_dict(), default=str) + "\n")
    else:
        stream.write(summarize(results) + "\n")
    return 0 if all(result.ok for result in results) else 1
