"""Audio frames and session events to Redis Streams: bounded, batched, in order, never blocking.

The transport calls `SessionPublisher.audio()` / `.event()` / `.close()` from its receive loop;
they only append to the session's queue and return. One writer task drains all queues with
pipelined XADDs. If Redis is slow or down the queues grow, each up to its bound (seconds of
audio), while the writer retries with backoff; then they drain in order. A session whose queue
is full is lost to publishing: `audio()` returns False, `on_overflow()` is called once (the
transport ends that session with `disconnect` error), and its rejected frames are counted.

Streams (key names in app/redis/keys.py):

* Session stream `audiohook:{<sessionId>}:audio`: every entry of one session in order, with
  explicit ids `1-0`, `2-0`, ... (a gap means entries were trimmed). Audio entries have fields
  `offset` (sample offset of the frame's first sample on the session timeline), `samples`
  (samples per channel) and `audio` (the frame as received: interleaved in the channel order
  of the selected media). Encrypted sessions add `kid` (key id) and `nonce`, and `audio` is
  the AES-256-GCM ciphertext with its tag (see payload_crypto). Event entries (same fields as
  in the events stream below) mark the session's lifecycle inline; the last entry is the
  `closed` event. A retried write never duplicates an entry: Redis refuses a repeated id.
* Events stream `audiohook:events`: lifecycle events of all sessions, for discovery with a
  consumer group. At-least-once: after a Redis failure an event may appear twice; `session_id`
  + `seq` identify it. A session's `closed` is only written after all its audio is in Redis.

Event entry schema (version "1"); every value is a string, `data` is a JSON object:

    schema           "1"
    type             opened | paused | resumed | discarded | language_updated | client_error
                     | closing | closed (the transport may add other types; consumers ignore
                     unknown ones)
    session_id, correlation_id, conversation_id, organization_id, integration
    probe            "1" for a connection probe (only published when publish_probe_events)
    seq              per-session event number, 1, 2, ...
    time             wall-clock time at the gateway, ISO 8601 UTC
    data             JSON: the fields given by the transport, plus
                     opened: "mode" (monitor | transcription: see the close window),
                             "media" ({"format", "rate", "channels"} or null), "stream" (the
                             session stream key or null), "encryption_key_id"
                     closing: "reason", "position" (the client sent `close` and the close
                             window opened: all audio is before it; send final events,
                             then the `finish` command)
                     closed: "reason", "counts" (from the transport), "frames_lost",
                             "last_entry" (id of this closed entry in the session stream)

Probes (null conversationId) never get a session stream and their audio is not written; they
are counted by the transport (metric audiohook_probes) and their `opened`/`closed` events go to
the events stream only when the setting publish_probe_events is on.

Modules: session_queue.py (SessionPublisher: entries and the bounded queue), writer.py (the
batch writer: batching, retry with backoff, readiness), outcomes.py (what Redis answered,
duplicate check after a retry), resp.py (RESP packing and the pipelined round trip).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.observability.metrics import PUBLISH_BACKLOG_FRAMES
from app.publisher.payload_crypto import PayloadCipher, parse_keys
from app.publisher.session_queue import (
    EVENT_TYPES,
    F_AUDIO,
    F_KID,
    F_NONCE,
    F_OFFSET,
    F_SAMPLES,
    SCHEMA_VERSION,
    QueuedAudio,
    SessionInfo,
    SessionPublisher,
)
from app.publisher.writer import BatchWriter
from app.redis.client import RedisClient, ping
from app.redis.resp import pack_commands
from app.tasks import stop_task

if TYPE_CHECKING:
    from app.config import Settings

__all__ = [
    "EVENT_TYPES",
    "F_AUDIO",
    "F_KID",
    "F_NONCE",
    "F_OFFSET",
    "F_SAMPLES",
    "SCHEMA_VERSION",
    "Publisher",
    "SessionInfo",
    "SessionPublisher",
    "pack_commands",
]

log = logging.getLogger("app.streams.publisher")


class Publisher(BatchWriter):
    """One writer task for all sessions of the process."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        health_interval: float = 1.0,
    ) -> None:
        super().__init__(redis, settings, clock, health_interval)
        self.backlog_seconds = settings.publish_backlog_seconds
        self.probe_events = settings.publish_probe_events
        self._keys = parse_keys(settings.payload_encryption_keys.get_secret_value())
        self._task: asyncio.Task[None] | None = None

    def has_key(self, key_id: str) -> bool:
        return key_id in self._keys

    async def start(self) -> None:
        self._set_ready(await ping(self._redis))
        if not self._ready:
            log.warning("redis unreachable at start; audio will wait in bounded backlogs")
        self._task = asyncio.create_task(self._run(), name="streams-publisher")

    async def flush(self, timeout_seconds: float) -> bool:
        """Wait until no session has anything left to write; False on timeout."""
        deadline = time.monotonic() + timeout_seconds
        while self._pending:
            if time.monotonic() >= deadline:
                return False
            self._wakeup.set()
            await asyncio.sleep(0.005)
        return True

    async def stop(self, flush_timeout: float) -> None:
        """Write what is queued (up to `flush_timeout` seconds), then stop the writer.
        Audio still queued after that is counted lost and logged."""
        if self._task is None:
            return
        await self.flush(flush_timeout)
        await stop_task(self._task)
        self._task = None
        for session in list(self._pending):
            frames = sum(1 for item in session.queue if isinstance(item, QueuedAudio))
            if frames:
                session._lose(frames)
                log.error(
                    "publisher stopped with unwritten audio",
                    extra=session._log_fields("shutdown"),
                )
            session.queue.clear()
            session.backlog_samples = 0
        self._pending.clear()
        self._backlog_frames = 0
        PUBLISH_BACKLOG_FRAMES.set(0)

    def open_session(self, info: SessionInfo, on_overflow: Callable[[], None]) -> SessionPublisher:
        """Start publishing a session. ValueError: the session id is already live here, or
        the integration's encryption key id is not configured."""
        if info.session_id in self._sessions:
            raise ValueError("session id already being published")
        cipher = None
        if info.encryption_key_id is not None and not info.is_probe:
            key = self._keys.get(info.encryption_key_id)
            if key is None:
                raise ValueError(
                    f"payload encryption key {info.encryption_key_id!r} not configured"
                )
            cipher = PayloadCipher(info.encryption_key_id, key, info.session_id)
        session = SessionPublisher(self, info, on_overflow, cipher)
        self._sessions[info.session_id] = session
        return session
