"""The transcriber's I/O: the events stream (consumer group), session streams, recognition in
a worker thread, and transcripts back over the control plane.

One member of the group gets a session's `opened` event and handles the whole session, so
members of one group (processes, on one or many hosts) share the calls. The `opened` entry
is acknowledged when the session is done; a member restarted under its name transcribes its
unacknowledged sessions again from the start (their utterance ids repeat).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from app.control.plane import APPLIED, RATE_LIMITED_RESULT, ControlClient
from app.protocol.media import SAMPLE_RATE
from app.publisher.payload_crypto import DecryptionError
from app.redis import keys as redis_keys
from app.redis.client import RedisClient
from app.redis.consumer_group import ensure_group, serve_sessions
from app.tools.consume import decode_event, entry_audio, is_event_entry, media_from_event
from app.transcriber.audio import upsample
from app.transcriber.entities import transcript_entity
from app.transcriber.recognizer import Recognizer
from app.transcriber.session import Offsets, SessionTranscript, Work

log = logging.getLogger("app.transcriber")

DEFAULT_GROUP = "audiohook-transcribe"
SEND_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class TranscriberOptions:
    group: str = DEFAULT_GROUP
    consumer: str = "transcriber"
    all_modes: bool = False  # also sessions of Monitor integrations (they get no close window)
    start_id: str = "$"  # when the group is created: only sessions opened from now on
    offsets: Offsets = "stream"  # or "received": gaps the client reported take no time
    block_seconds: float = 1.0
    idle_timeout: float = 120.0  # a session stream silent this long without `closed` is left


class Transcriber:
    def __init__(
        self,
        redis: RedisClient,
        recognizer: Recognizer,
        options: TranscriberOptions,
        keys: Mapping[str, bytes] | None = None,
    ) -> None:
        self._redis = redis
        self._recognizer = recognizer
        self._options = options
        self._keys = keys or {}
        self._control = ControlClient(redis, block_seconds=options.block_seconds)
        # One thread: recognisers need not be thread-safe, and one core per process is the
        # unit of scaling (add group members).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="recognizer")
        self._block_ms = max(1, int(options.block_seconds * 1000))
        self.sessions_done = 0

    # --- the events stream ----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, sessions_limit: int | None = None) -> None:
        options = self._options
        await ensure_group(self._redis, options.group, options.start_id)
        try:
            await serve_sessions(
                self._redis, options.group, options.consumer, self._start, self._session_done,
                stop=stop, sessions_limit=sessions_limit, block_ms=self._block_ms, logger=log,
            )  # fmt: skip
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _session_done(self, _result: None) -> None:
        self.sessions_done += 1

    def _start(self, fields: Mapping[bytes, bytes]) -> Coroutine[Any, Any, None] | None:
        event = decode_event(fields)
        data = event["data"]
        if event["type"] != "opened" or event["probe"]:
            return None
        if not self._options.all_modes and data.get("mode") != "transcription":
            return None
        media = media_from_event(data)
        language = data.get("language")
        if media is None:
            return None
        transcript = SessionTranscript(media, language, offsets=self._options.offsets)
        session_id = event["session_id"]
        stream = data.get("stream") or redis_keys.audio_stream(session_id)
        log.info("transcribing session", extra={"session_id": session_id, "language": language})
        return self._follow(session_id, stream, transcript)

    # --- one session ----------------------------------------------------------------------------
    async def _follow(self, session_id: str, stream: str, transcript: SessionTranscript) -> None:
        last_id: bytes | str = "0-0"
        last_activity = time.monotonic()
        while not transcript.ended:
            try:
                response: Any = await self._redis.xread(
                    {stream: last_id}, count=100, block=self._block_ms
                )
            except (RedisError, OSError) as exc:
                log.warning("session stream read failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(0.5)
                continue
            if not response:
                if time.monotonic() - last_activity > self._options.idle_timeout:
                    log.warning("session stream idle; left", extra={"session_id": session_id})
                    return
                continue
            last_activity = time.monotonic()
            for entry_id, fields in response[0][1]:
                last_id = entry_id
                await self._transcribe(session_id, self._entry(session_id, fields, transcript))
                if transcript.ended:
                    break
        if transcript.finish_requested:
            await self._send(session_id, "finish")

    def _entry(
        self, session_id: str, fields: Mapping[bytes, bytes], transcript: SessionTranscript
    ) -> list[Work]:
        if is_event_entry(fields):
            event = decode_event(fields)
            return transcript.event(event["type"], event["data"])
        try:
            offset, _samples, audio = entry_audio(fields, session_id, self._keys)
        except (DecryptionError, KeyError, ValueError):
            log.warning("audio entry unreadable; skipped", extra={"session_id": session_id})
            return []
        return transcript.audio(offset, audio)

    async def _transcribe(self, session_id: str, work: list[Work]) -> None:
        recognizer = self._recognizer
        loop = asyncio.get_running_loop()
        for utterance, language in work:
            if language is None or not recognizer.supports(language):
                continue  # not a language this recogniser knows: no transcript
            samples = upsample(utterance.audio, recognizer.sample_rate // SAMPLE_RATE)
            recognition = await loop.run_in_executor(
                self._executor, recognizer.recognize, samples, language
            )
            entity = transcript_entity(session_id, utterance, recognition, language)
            await self._send(session_id, "event", entities=[entity])

    async def _send(self, session_id: str, command: str, **params: Any) -> None:
        """Send one command; retried while rate-limited or Redis fails, a few times."""
        result = "not sent"
        for _attempt in range(SEND_ATTEMPTS):
            try:
                reply = await self._control.request(session_id, command, **params)
            except (TimeoutError, RedisError, OSError) as exc:
                result = type(exc).__name__
                await asyncio.sleep(0.2)
                continue
            result = reply.result
            if result != RATE_LIMITED_RESULT:
                break
            await asyncio.sleep(0.1)
        if result != APPLIED:
            log.warning(
                "command not applied",
                extra={"session_id": session_id, "command": command, "result": result},
            )
