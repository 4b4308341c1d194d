"""Audio frames and session events to Redis Streams: bounded, batched, in order, never blocking.

The transport calls `SessionPublisher.audio()` / `.event()` / `.close()` from its receive loop;
they only append to the session's queue and return. One writer task drains all queues with
pipelined XADDs. If Redis is slow or down the queues grow, each up to its bound (seconds of
audio), while the writer retries with backoff; then they drain in order. A session whose queue
is full is lost to publishing: `audio()` returns False, `on_overflow()` is called once (the
transport ends that session with `disconnect` error), and its rejected frames are counted.

Stream and event schema: app/publisher/schema.py.

Modules: schema.py (what the streams hold), session_queue.py (SessionPublisher: entries and
the bounded queue), writer.py (the batch writer: batching, retry with backoff, readiness),
outcomes.py (what Redis answered, duplicate check after a retry), app/redis/resp.py (RESP
packing and the pipelined round trip).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.observability.metrics import PUBLISH_BACKLOG_FRAMES
from app.publisher.payload_crypto import PayloadCipher, parse_keys
from app.publisher.session_queue import QueuedAudio, SessionInfo, SessionPublisher
from app.publisher.writer import BatchWriter
from app.redis.client import RedisClient, ping
from app.redis.resp import pack_commands
from app.tasks import stop_task

if TYPE_CHECKING:
    from app.config import Settings

__all__ = [
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
