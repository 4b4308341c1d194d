"""`audiohook-gateway consume`: record every session from Redis into WAV files.

Also the reference for consumer authors. The pattern:

1. Join a consumer group on `audiohook:events`; each `opened` event (one consumer of the
   group gets it) names the session stream in `data.stream`.
2. Read that session stream from the start (XREAD BLOCK). It holds the session's audio
   entries and, inline and in order, its lifecycle events; `closed` is the last entry.
3. When done, XACK the `opened` event. Events other than `opened` are acknowledged at once:
   the session stream has them too. A consumer that restarts under the same name re-reads its
   unacknowledged `opened` events and records those sessions again from the start
   (`app/redis/consumer_group.py` is that loop).

Output per session: `<sessionId>.wav` (16-bit PCM, which every player opens; PCMU is expanded
from µ-law unless `--wav-encoding mulaw` keeps it as a µ-law WAV; channels in the selected
order) and `<sessionId>.json` (session ids, media, events, audio statistics).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from app.protocol.media import MediaFormat
from app.publisher.payload_crypto import DecryptionError, decrypt, parse_keys
from app.publisher.schema import F_AUDIO, F_KID, F_NONCE, F_OFFSET, F_SAMPLES
from app.redis import keys as redis_keys
from app.redis.client import RedisClient
from app.redis.consumer_group import ensure_group, serve_sessions
from app.tools.wav import WAV_ENCODINGS, WavEncoding, WavWriter

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger("app.streams.consumer")

DEFAULT_GROUP = "audiohook-consume"

StreamEntry = tuple[bytes, Mapping[bytes, bytes]]


# --- pure helpers -----------------------------------------------------------------------------


def is_event_entry(fields: Mapping[bytes, bytes]) -> bool:
    return b"type" in fields


def decode_event(fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    """An event entry (events stream or session stream) as a dict with `data` parsed."""
    event: dict[str, Any] = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
    event["data"] = orjson.loads(fields.get(b"data", b"{}"))
    event["probe"] = fields.get(b"probe") == b"1"
    return event


def media_from_event(data: Mapping[str, Any]) -> MediaFormat | None:
    media = data.get("media")
    if not isinstance(media, Mapping):
        return None
    return MediaFormat(
        format=media["format"], channels=tuple(media["channels"]), rate=int(media["rate"])
    )


def entry_audio(
    fields: Mapping[bytes, bytes], session_id: str, keys: Mapping[str, bytes]
) -> tuple[int, int, bytes]:
    """(sample offset, sample count, plaintext audio) of an audio entry; DecryptionError."""
    offset = int(fields[F_OFFSET])
    samples = int(fields[F_SAMPLES])
    audio = fields[F_AUDIO]
    if F_KID in fields:
        audio = decrypt(keys, fields[F_KID].decode(), fields[F_NONCE], audio, session_id, offset)
    return offset, samples, audio


def silence(media: MediaFormat, samples: int) -> bytes:
    fill = b"\xff" if media.format == "PCMU" else b"\x00"  # µ-law 0xFF is zero amplitude
    return fill * (samples * media.bytes_per_sample_group)


@dataclass
class AudioStats:
    entries: int = 0
    samples: int = 0
    bytes: int = 0
    missing_entries: int = 0  # ids skipped: entries trimmed before they were read
    undecryptable: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (expected offset, actual)
    next_offset: int | None = None
    next_index: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "samples": self.samples,
            "bytes": self.bytes,
            "missing_entries": self.missing_entries,
            "undecryptable": self.undecryptable,
            "gaps": [list(gap) for gap in self.gaps],
        }


class AudioAssembler:
    """Turns audio entries, in stream order, into the bytes of the recording."""

    def __init__(
        self,
        media: MediaFormat,
        session_id: str,
        keys: Mapping[str, bytes],
        *,
        fill_gaps: bool = False,
    ) -> None:
        self.media = media
        self.session_id = session_id
        self.keys = keys
        self.fill_gaps = fill_gaps
        self.stats = AudioStats()

    def add(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> bytes:
        """The bytes to append for this stream entry (b"" for event entries)."""
        index = int(entry_id.split(b"-", 1)[0])
        stats = self.stats
        if index > stats.next_index:
            stats.missing_entries += index - stats.next_index
        stats.next_index = index + 1
        if is_event_entry(fields):
            return b""
        try:
            offset, samples, audio = entry_audio(fields, self.session_id, self.keys)
        except (DecryptionError, KeyError, ValueError):
            stats.undecryptable += 1
            return b""
        out = audio
        if stats.next_offset is not None and offset != stats.next_offset:
            stats.gaps.append((stats.next_offset, offset))
            if self.fill_gaps and offset > stats.next_offset:
                out = silence(self.media, offset - stats.next_offset) + audio
        stats.next_offset = offset + samples
        stats.entries += 1
        stats.samples += samples
        stats.bytes += len(audio)
        return out


def reassemble(
    entries: Iterable[StreamEntry],
    media: MediaFormat,
    *,
    session_id: str,
    keys: Mapping[str, bytes] | None = None,
    fill_gaps: bool = False,
) -> bytes:
    """The session's audio from its stream entries (XRANGE order); event entries skipped,
    encrypted entries decrypted. With fill_gaps, silence stands in for timeline gaps."""
    assembler = AudioAssembler(media, session_id, keys or {}, fill_gaps=fill_gaps)
    return b"".join(assembler.add(entry_id, fields) for entry_id, fields in entries)


# --- recording one session --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRecording:
    session_id: str
    wav_path: Path | None
    sidecar_path: Path
    complete: bool  # the `closed` event was seen (else: idle timeout or stop)
    audio: AudioStats


class _Recorder:
    def __init__(
        self,
        redis: RedisClient,
        opened: dict[str, Any],
        output_dir: Path,
        keys: Mapping[str, bytes],
        *,
        fill_gaps: bool,
        idle_timeout: float,
        block_ms: int,
        wav_encoding: WavEncoding = "pcm16",
    ) -> None:
        self._wav_encoding: WavEncoding = wav_encoding
        self._redis = redis
        self._opened = opened
        self.session_id: str = opened["session_id"]
        self._stream = opened["data"].get("stream") or redis_keys.audio_stream(self.session_id)
        self._media = media_from_event(opened["data"])
        self._output_dir = output_dir
        self._keys = keys
        self._fill_gaps = fill_gaps
        self._idle_timeout = idle_timeout
        self._block_ms = block_ms

    async def run(self) -> SessionRecording:
        wav: WavWriter | None = None
        assembler: AudioAssembler | None = None
        if self._media is not None:
            path = self._output_dir / f"{self.session_id}.wav"
            wav = WavWriter(
                path,
                self._media.format,
                self._media.channel_count,
                self._media.rate,
                encoding=self._wav_encoding,
            )
            assembler = AudioAssembler(
                self._media, self.session_id, self._keys, fill_gaps=self._fill_gaps
            )
        events: list[dict[str, Any]] = []
        complete = False
        try:
            complete = await self._follow(wav, assembler, events)
        finally:
            if wav is not None:
                wav.close()
        stats = assembler.stats if assembler else AudioStats()
        sidecar = self._output_dir / f"{self.session_id}.json"
        sidecar.write_bytes(
            orjson.dumps(self._sidecar(wav, events, stats, complete), option=orjson.OPT_INDENT_2)
        )
        return SessionRecording(
            self.session_id, wav.path if wav else None, sidecar, complete, stats
        )

    async def _follow(
        self,
        wav: WavWriter | None,
        assembler: AudioAssembler | None,
        events: list[dict[str, Any]],
    ) -> bool:
        last_id: bytes | str = "0-0"
        last_activity = time.monotonic()
        while True:
            try:
                response: Any = await self._redis.xread(
                    {self._stream: last_id}, count=500, block=self._block_ms
                )
            except (RedisError, OSError) as exc:
                log.warning("session stream read failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(0.5)
                continue
            if not response:
                if time.monotonic() - last_activity > self._idle_timeout:
                    log.warning("session stream idle; recording ends without `closed`",
                                extra={"session_id": self.session_id})  # fmt: skip
                    return False
                continue
            last_activity = time.monotonic()
            for _stream, entries in response:
                for entry_id, fields in entries:
                    last_id = entry_id
                    if assembler is not None and wav is not None:
                        wav.write(assembler.add(entry_id, fields))
                    if is_event_entry(fields):
                        event = decode_event(fields)
                        events.append(event)
                        if event["type"] == "closed":
                            return True

    def _sidecar(
        self,
        wav: WavWriter | None,
        events: list[dict[str, Any]],
        stats: AudioStats,
        complete: bool,
    ) -> dict[str, Any]:
        opened = self._opened
        return {
            "session_id": self.session_id,
            "correlation_id": opened.get("correlation_id"),
            "conversation_id": opened.get("conversation_id"),
            "organization_id": opened.get("organization_id"),
            "integration": opened.get("integration"),
            "stream": self._stream,
            "media": opened["data"].get("media"),
            "wav": wav.path.name if wav else None,
            "wav_encoding": wav.encoding if wav else None,
            "complete": complete,
            "audio": stats.as_dict(),
            "events": [_sidecar_event(e) for e in events],
        }


def _sidecar_event(event: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": event["type"],
        "seq": int(event.get("seq", 0)),
        "time": event.get("time"),
        "data": event["data"],
    }


# --- the consumer loop ------------------------------------------------------------------------


def stop_on_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets (where the running loop takes signal handlers)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    return stop


async def run_consumer(
    redis: RedisClient,
    output_dir: Path,
    *,
    group: str,
    consumer: str,
    keys: Mapping[str, bytes],
    stop: asyncio.Event | None = None,
    sessions_limit: int | None = None,
    start_id: str = "0",
    fill_gaps: bool = False,
    idle_timeout: float = 300.0,
    block_seconds: float = 1.0,
    wav_encoding: WavEncoding = "pcm16",
) -> list[SessionRecording]:
    """Record sessions until `stop` is set or `sessions_limit` sessions are recorded.

    `start_id` applies when the group is created: "0" records sessions still in the events
    stream, "$" only sessions opened from now on. Returns the finished recordings.
    """
    await asyncio.to_thread(output_dir.mkdir, parents=True, exist_ok=True)
    stop = stop or asyncio.Event()
    block_ms = max(1, int(block_seconds * 1000))
    await ensure_group(redis, group, start_id)
    recordings: list[SessionRecording] = []
    started: set[str] = set()

    def record(fields: Mapping[bytes, bytes]) -> Coroutine[Any, Any, SessionRecording] | None:
        event = decode_event(fields)
        session_id = event.get("session_id", "")
        if event["type"] != "opened" or event["probe"] or session_id in started:
            return None
        started.add(session_id)
        recorder = _Recorder(redis, event, output_dir, keys, fill_gaps=fill_gaps,
                             idle_timeout=idle_timeout, block_ms=block_ms,
                             wav_encoding=wav_encoding)  # fmt: skip
        return recorder.run()

    def recorded(recording: SessionRecording) -> None:
        recordings.append(recording)
        log.info("session recorded", extra={"session_id": recording.session_id,
                 "complete": recording.complete})  # fmt: skip

    await serve_sessions(redis, group, consumer, record, recorded, stop=stop,
                         sessions_limit=sessions_limit, block_ms=block_ms, logger=log)  # fmt: skip
    return recordings


# --- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url", default=None, help="Redis URL (default: AUDIOHOOK_REDIS_URL)."
    )
    parser.add_argument(
        "--cluster", action="store_true", default=None,
        help="Use the Redis Cluster client (default: AUDIOHOOK_REDIS_CLUSTER).",
    )  # fmt: skip
    parser.add_argument(
        "--output-dir", type=Path, default=Path("recordings"), help="Where files are written."
    )
    parser.add_argument("--group", default=DEFAULT_GROUP, help="Consumer group name.")
    parser.add_argument(
        "--consumer", default=None, help="Consumer name in the group (default: host-pid)."
    )
    parser.add_argument(
        "--sessions", type=int, default=None, help="Exit after recording this many sessions."
    )
    parser.add_argument(
        "--new-only", action="store_true",
        help="When creating the group, skip sessions already in the events stream.",
    )  # fmt: skip
    parser.add_argument(
        "--fill-gaps", action="store_true",
        help="Insert silence where the audio timeline has gaps (pauses, discarded audio).",
    )  # fmt: skip
    parser.add_argument(
        "--idle-timeout", type=float, default=300.0,
        help="Finish a recording whose stream has been silent this long without `closed`.",
    )  # fmt: skip
    parser.add_argument(
        "--wav-encoding", choices=WAV_ENCODINGS, default="pcm16",
        help="pcm16 (default): 16-bit PCM WAV that every player opens, PCMU expanded from "
        "µ-law; mulaw: keep PCMU as it came, a µ-law WAV (format 7) half the size.",
    )  # fmt: skip
    parser.add_argument(
        "--keys-file", type=Path, default=None,
        help="JSON map key id -> base64 key for decryption (default: "
        "AUDIOHOOK_PAYLOAD_ENCRYPTION_KEYS).",
    )  # fmt: skip


def _fail(command: str, message: str, code: int) -> int:
    print(f"audiohook-gateway {command}: {message}", file=sys.stderr)
    return code


def settings_and_redis_url(args: argparse.Namespace, command: str) -> tuple[Settings, str] | int:
    """For a command that reads what a gateway publishes (`consume`, `transcribe`): the checked
    settings of `args.env_file` and the Redis to read, from --redis-url, AUDIOHOOK_REDIS_URL or
    the running embedded Redis of that gateway. An int instead: the exit code, with the problem
    said in one line."""
    from app import preflight
    from app.redis.embedded import running_server_url

    env_file: Path | None = getattr(args, "env_file", None)
    try:
        settings = preflight.load_checked_settings(env_file)
    except preflight.ConfigProblems as exc:
        return preflight.report(exc.problems, command)
    url = args.redis_url or settings.redis_url
    data_dir = settings.redis_embedded_dir
    if not url and data_dir is not None:
        url = running_server_url(data_dir)  # the gateway's embedded Redis
        if not url:
            serve = f"audiohook-gateway serve --env-file {env_file}" if env_file else "the gateway"
            return _fail(
                command,
                f"the gateway's embedded Redis ({data_dir}) is not running: start {serve} first "
                f"({command} reads what it publishes), or pass --redis-url",
                preflight.EXIT_START,
            )
    if not url:
        return _fail(
            command,
            "no Redis to read: pass --redis-url or set AUDIOHOOK_REDIS_URL; to follow a local "
            "gateway's embedded Redis, give its env file (--env-file .env.example)",
            preflight.EXIT_CONFIG,
        )
    return settings, url


def main(args: argparse.Namespace) -> int:
    from app.redis.client import blocking_read_seconds, create_redis

    target = settings_and_redis_url(args, "consume")
    if isinstance(target, int):
        return target
    settings, url = target
    if args.cluster is not None:
        settings = settings.model_copy(update={"redis_cluster": args.cluster})
    raw_keys = (
        args.keys_file.read_text()
        if args.keys_file
        else settings.payload_encryption_keys.get_secret_value()
    )
    keys = parse_keys(raw_keys)
    consumer = args.consumer or f"{socket.gethostname()}-{os.getpid()}"

    async def consume() -> list[SessionRecording]:
        stop = stop_on_signals()
        redis = create_redis(settings, url)
        try:
            return await run_consumer(
                redis, args.output_dir, group=args.group, consumer=consumer, keys=keys,
                stop=stop, sessions_limit=args.sessions,
                start_id="$" if args.new_only else "0",
                fill_gaps=args.fill_gaps, idle_timeout=args.idle_timeout,
                wav_encoding=args.wav_encoding,
                block_seconds=blocking_read_seconds(settings.redis_timeout_seconds),
            )  # fmt: skip
        finally:
            await redis.aclose()

    for recording in asyncio.run(consume()):
        print(orjson.dumps({
            "session_id": recording.session_id,
            "wav": str(recording.wav_path) if recording.wav_path else None,
            "sidecar": str(recording.sidecar_path),
            "complete": recording.complete,
            "samples": recording.audio.samples,
        }).decode())  # fmt: skip
    return 0
