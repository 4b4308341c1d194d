"""Audio frames and session events to Redis Streams: bounded, batched, in order, never blocking.

The transport calls `SessionPublisher.audio()` / `.event()` / `.close()` from its receive loop;
they only append to the session's queue and return. One writer task drains all queues with
pipelined XADDs. If Redis is slow or down the queues grow, each up to its bound (seconds of
audio), while the writer retries with backoff; then they drain in order. A session whose queue
is full is lost to publishing: `audio()` returns False, `on_overflow()` is called once (the
transport ends that session with `disconnect` error), and its rejected frames are counted.

Streams (key names in app/streams/keys.py):

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
                     | closed (the transport may add other types; consumers ignore unknown ones)
    session_id, correlation_id, conversation_id, organization_id, integration
    probe            "1" for a connection probe (only published when publish_probe_events)
    seq              per-session event number, 1, 2, ...
    time             wall-clock time at the gateway, ISO 8601 UTC
    data             JSON: the fields given by the transport, plus
                     opened: "media" ({"format", "rate", "channels"} or null), "stream" (the
                             session stream key or null), "encryption_key_id"
                     closed: "reason", "counts" (from the transport), "frames_lost",
                             "last_entry" (id of this closed entry in the session stream)

Probes (null conversationId) never get a session stream and their audio is not written; they
are counted by the transport (metric audiohook_probes) and their `opened`/`closed` events go to
the events stream only when the setting publish_probe_events is on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import TYPE_CHECKING, Any, Final

import orjson
import redis.asyncio
from redis.exceptions import (
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.observability.metrics import (
    EVENTS_PUBLISHED,
    FRAMES_LOST,
    FRAMES_PUBLISHED,
    PUBLISH_BACKLOG_FILL_RATIO,
    PUBLISH_BACKLOG_FRAMES,
    PUBLISH_LATENCY,
    REDIS_ERRORS,
    REDIS_RECONNECTS,
    REDIS_UP,
)
from app.protocol.media import MediaFormat
from app.streams import keys
from app.streams.payload_crypto import PayloadCipher, parse_keys
from app.streams.redis_client import RedisClient, ping
from app.streams.tasks import stop_task

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger("app.streams.publisher")

SCHEMA_VERSION: Final = "1"
EVENT_TYPES: Final = frozenset(
    {"opened", "paused", "resumed", "discarded", "language_updated", "client_error", "closed"}
)
F_OFFSET: Final = b"offset"
F_SAMPLES: Final = b"samples"
F_AUDIO: Final = b"audio"
F_KID: Final = b"kid"
F_NONCE: Final = b"nonce"

_BACKOFF_START = 0.05
_EVENT_SLACK = 64  # events accepted beyond a full queue, so `closed` always gets through
_GAUGE_INTERVAL = 0.25
_OVERLAP_AFTER_SECONDS = 0.004  # how long a second batch waits for the first to come back
_TRANSIENT_PREFIXES = ("OOM", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN",
                       "READONLY", "NOREPLICAS", "MOVED", "ASK")  # fmt: skip


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    correlation_id: str
    integration: str
    organization_id: str
    conversation_id: str
    is_probe: bool
    media: MediaFormat | None
    encryption_key_id: str | None = None


class _Audio:
    __slots__ = ("entry_id", "fields", "received_at", "samples")

    def __init__(
        self, entry_id: bytes, fields: dict[bytes, bytes], samples: int, received_at: float
    ) -> None:
        self.entry_id = entry_id
        self.fields = fields
        self.samples = samples
        self.received_at = received_at


class _Event:
    __slots__ = ("closing", "entry_id", "event_type", "fields")

    def __init__(
        self, event_type: str, fields: dict[bytes, bytes], entry_id: bytes | None, closing: bool
    ) -> None:
        self.event_type = event_type
        self.fields = fields
        self.entry_id = entry_id  # None: not written to a session stream (probe)
        self.closing = closing


_Item = _Audio | _Event

# Outcome of one queued item in a batch.
_OK, _DUPLICATE, _RETRY, _FAILED = range(4)


def _classify(result: object) -> int:
    if not isinstance(result, Exception):
        return _OK
    if isinstance(result, (RedisConnectionError, RedisTimeoutError, BusyLoadingError)):
        return _RETRY
    if isinstance(result, (OutOfMemoryError, ReadOnlyError)):
        return _RETRY
    if isinstance(result, ResponseError):
        message = str(result)
        if "equal or smaller" in message:  # XADD with an id already in the stream
            return _DUPLICATE
        if message.startswith(_TRANSIENT_PREFIXES):
            return _RETRY
        return _FAILED
    return _RETRY if isinstance(result, RedisError) else _FAILED


_RESP_FORMATS: dict[int, bytes] = {}


def pack_commands(commands: list[tuple[Any, ...]]) -> list[bytes]:
    """The commands in RESP, one bytes object each: the same bytes as redis-py's
    pack_commands() for str/bytes/int arguments, at a third of its cost (one %-format per
    command with a format cached by argument count, instead of several joins per argument)."""
    packed: list[bytes] = []
    for args in commands:
        count = len(args)
        template = _RESP_FORMATS.get(count)
        if template is None:
            template = _RESP_FORMATS[count] = b"*%d\r\n" % count + b"$%d\r\n%b\r\n" * count
        values: list[int | bytes] = []
        for arg in args:
            if arg.__class__ is str:
                arg = arg.encode()
            elif arg.__class__ is int:
                arg = b"%d" % arg
            values += (len(arg), arg)
        packed.append(template % tuple(values))
    return packed


def _wall_clock() -> bytes:
    return datetime.now(UTC).isoformat(timespec="milliseconds").encode()


class SessionPublisher:
    """The publishing side of one session. Methods never block and never raise on Redis."""

    def __init__(
        self,
        publisher: Publisher,
        info: SessionInfo,
        on_overflow: Callable[[], None],
        cipher: PayloadCipher | None,
    ) -> None:
        self.info = info
        self._publisher = publisher
        self._on_overflow = on_overflow
        self._cipher = cipher
        self._kid = cipher.key_id.encode() if cipher else b""
        rate = info.media.rate if info.media else 8000
        self.bound_samples = max(1, int(publisher.backlog_seconds * rate))
        # Also bound the entry count: empty frames carry no samples but still cost memory.
        self._max_items = int(publisher.backlog_seconds * 100) + 100
        self.stream_key: str | None = None if info.is_probe else keys.audio_stream(info.session_id)
        self._publish_events = publisher.probe_events or not info.is_probe
        self.queue: deque[_Item] = deque()
        self.backlog_samples = 0
        self.frames_lost = 0
        self.frames_published = 0
        self.failed = False
        self.closed = False
        self._next_index = 1
        self._event_seq = 0
        self.expiry_set_at = float("-inf")
        self.in_flight = False  # some of the queue's head is in a batch being written
        self._lost_metric = FRAMES_LOST.labels(info.integration)
        self._envelope = {
            b"schema": SCHEMA_VERSION.encode(),
            b"session_id": info.session_id.encode(),
            b"correlation_id": info.correlation_id.encode(),
            b"conversation_id": info.conversation_id.encode(),
            b"organization_id": info.organization_id.encode(),
            b"integration": info.integration.encode(),
            b"probe": b"1" if info.is_probe else b"0",
        }

    @property
    def backlog_seconds(self) -> float:
        return self.backlog_samples / (self.info.media.rate if self.info.media else 8000)

    def audio(self, data: bytes, sample_offset: int, sample_count: int, received_at: float) -> bool:
        """Queue one accepted frame. False: the session can no longer be published (its
        backlog overflowed or a write failed for good); the transport ends it with error.

        `received_at` is on the publisher's clock (time.monotonic by default)."""
        if self.stream_key is None:  # probe: audio is not kept
            return not self.closed
        if self.failed or self.closed:
            if not self.closed:
                self._lose(1)
            return False
        if (
            self.backlog_samples + sample_count > self.bound_samples
            or len(self.queue) >= self._max_items
        ):
            self._overflow()
            return False
        if self._cipher is None:
            fields = {F_OFFSET: b"%d" % sample_offset, F_SAMPLES: b"%d" % sample_count,
                      F_AUDIO: data}  # fmt: skip
        else:
            nonce, sealed = self._cipher.encrypt(sample_offset, data)
            fields = {F_OFFSET: b"%d" % sample_offset, F_SAMPLES: b"%d" % sample_count,
                      F_KID: self._kid, F_NONCE: nonce, F_AUDIO: sealed}  # fmt: skip
        self.queue.append(_Audio(b"%d-0" % self._next_index, fields, sample_count, received_at))
        self._next_index += 1
        self.backlog_samples += sample_count
        self._publisher._enqueued(self, audio=True)
        return True

    def event(self, event_type: str, fields: Mapping[str, Any]) -> bool:
        """Queue a lifecycle event (see the module doc for types and schema). False when the
        session is closed or, after an overflow, too many events are already waiting."""
        if event_type == "closed":  # same as close(fields["reason"], fields["counts"])
            if self.closed:
                return False
            self.close(fields.get("reason"), fields.get("counts") or {})
            return True
        return self._queue_event(event_type, dict(fields), closing=False)

    def close(self, reason: str | None, counts: Mapping[str, int]) -> None:
        """Queue `closed`; once it is written the session stream expires after the TTL."""
        if self.closed:
            return
        data: dict[str, Any] = {
            "reason": reason,
            "counts": dict(counts),
            "frames_lost": self.frames_lost,
        }
        if self.stream_key is not None:
            data["last_entry"] = f"{self._next_index}-0"
        self._queue_event("closed", data, closing=True)
        self.closed = True
        self._publisher._enqueued(self, audio=False)  # lets the writer retire the session

    def _queue_event(self, event_type: str, data: dict[str, Any], *, closing: bool) -> bool:
        if self.closed:
            return False
        if not self._publish_events:
            return True
        if len(self.queue) >= self._max_items + _EVENT_SLACK:
            log.error("event dropped: session backlog full", extra=self._log_fields(event_type))
            return False
        if event_type == "opened":
            media = self.info.media
            data["media"] = None if media is None else {
                "format": media.format, "rate": media.rate, "channels": list(media.channels)
            }  # fmt: skip
            data["stream"] = self.stream_key
            data["encryption_key_id"] = self.info.encryption_key_id
        self._event_seq += 1
        fields = dict(self._envelope)
        fields[b"type"] = event_type.encode()
        fields[b"seq"] = b"%d" % self._event_seq
        fields[b"time"] = _wall_clock()
        fields[b"data"] = orjson.dumps(data, default=str)
        entry_id = None
        if self.stream_key is not None:
            entry_id = b"%d-0" % self._next_index
            self._next_index += 1
        self.queue.append(_Event(event_type, fields, entry_id, closing))
        self._publisher._enqueued(self, audio=False)
        return True

    def _overflow(self) -> None:
        self.failed = True
        self._lose(1)
        log.warning(
            "publish backlog overflow: ending session",
            extra={**self._log_fields("overflow"), "backlog_seconds": self.backlog_seconds},
        )
        self._notify_failure()

    def _fail(self, why: str) -> None:
        if not self.failed:
            self.failed = True
            log.error("session stream write failed: ending session", extra=self._log_fields(why))
            self._notify_failure()

    def _notify_failure(self) -> None:
        try:
            self._on_overflow()
        except Exception:
            log.exception("on_overflow callback failed", extra=self._log_fields("overflow"))

    def _lose(self, frames: int) -> None:
        self.frames_lost += frames
        self._lost_metric.inc(frames)

    def _log_fields(self, what: str) -> dict[str, Any]:
        return {
            "session_id": self.info.session_id,
            "correlation_id": self.info.correlation_id,
            "conversation_id": self.info.conversation_id,
            "integration": self.info.integration,
            "what": what,
            "frames_lost": self.frames_lost,
        }


class Publisher:
    """One writer task for all sessions of the process."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        health_interval: float = 1.0,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self.backlog_seconds = settings.publish_backlog_seconds
        self.probe_events = settings.publish_probe_events
        self._batch_max = settings.publish_batch_max
        self._retry_max = settings.publish_retry_max_seconds
        self._ttl = settings.stream_ttl_seconds
        self._audio_trim = (b"MAXLEN", b"~", b"%d" % settings.audio_stream_maxlen)
        self._events_trim = (b"MAXLEN", b"~", b"%d" % settings.events_stream_maxlen)
        self._read_timeout = settings.redis_timeout_seconds
        self._expiry_refresh = min(self._ttl / 4, 60.0)
        self._health_interval = health_interval
        self._keys = parse_keys(settings.payload_encryption_keys.get_secret_value())
        self._sessions: dict[str, SessionPublisher] = {}
        self._pending: dict[SessionPublisher, None] = {}  # sessions with queued items, in order
        self._backlog_frames = 0
        self._wakeup = asyncio.Event()
        self._batches_in_flight = 0
        self._backoff = _BACKOFF_START
        self._retry_at = float("-inf")  # on the event loop's clock
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        self._was_up = False
        self._gauges_at = float("-inf")

    @property
    def ready(self) -> bool:
        """Redis answered the last write or health check."""
        return self._ready

    @property
    def backlog_frames(self) -> int:
        return self._backlog_frames

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
            frames = sum(1 for item in session.queue if isinstance(item, _Audio))
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

    def _enqueued(self, session: SessionPublisher, *, audio: bool) -> None:
        if audio:
            self._backlog_frames += 1
        if session not in self._pending:
            self._pending[session] = None
        self._wakeup.set()

    # --- writer ------------------------------------------------------------------------------

    async def _run(self) -> None:
        # Up to two batches in flight: frames that arrive during a slow round trip leave in a
        # second batch instead of waiting for it. A session is in one batch at a time, so its
        # entries stay in order (and a retried entry never follows a later one).
        await asyncio.gather(*(self._writer(checks_health=index == 0) for index in range(2)))

    async def _writer(self, *, checks_health: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pause = self._retry_at - loop.time()
            if pause > 0:  # after a failed write both writers wait out the same backoff
                await asyncio.sleep(pause)
            written = await self._write_batch()
            if written is None:  # nothing to write, or only what the other writer has out
                self._wakeup.clear()
                if checks_health and not self._pending:
                    self._update_gauges(force=True)
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), self._health_interval)
                    except TimeoutError:
                        self._set_ready(await ping(self._redis))
                else:
                    await self._wakeup.wait()
                if self._batches_in_flight:
                    # Only overlap a round trip that is slow: a quick one takes these frames
                    # itself, and many small batches would cost more CPU than one large one.
                    await asyncio.sleep(_OVERLAP_AFTER_SECONDS)
            elif written:
                self._backoff = _BACKOFF_START
            else:
                self._retry_at = loop.time() + self._backoff
                self._backoff = min(self._backoff * 2, self._retry_max)

    async def _write_batch(self) -> bool | None:
        """One pipelined round trip; True unless something must be retried, None when there
        was nothing to write."""
        commands: list[tuple[Any, ...]] = []
        plan: list[tuple[SessionPublisher, list[tuple[_Item, int]], int]] = []
        budget = self._batch_max
        per_session = max(1, budget // max(1, len(self._pending)))
        now = self._clock()
        for session in list(self._pending):
            if session.in_flight:
                continue
            if not session.queue:
                self._retire(session)
                continue
            taken: list[tuple[_Item, int]] = []
            extra = 0
            for index, item in enumerate(session.queue):
                # An event waits for the audio queued before it to be acknowledged, so that on
                # Redis Cluster (other slot) `closed` never overtakes the session's audio.
                if index >= per_session or budget <= 0 or (index and isinstance(item, _Event)):
                    break
                taken.append((item, self._add_commands(commands, session, item)))
                budget -= 1
            if (
                session.stream_key is not None
                and now - session.expiry_set_at > self._expiry_refresh
            ):
                # Pushed forward while live, so the streams of a lost replica expire too.
                commands.append(("EXPIRE", session.stream_key, self._ttl))
                session.expiry_set_at = now
                extra = 1
            plan.append((session, taken, extra))
            if budget <= 0:
                break
        if not plan:
            return None
        for session, _, _ in plan:
            session.in_flight = True
        self._batches_in_flight += 1
        try:
            try:
                results = await self._execute(commands)
            except (RedisError, OSError) as exc:
                self._write_failed(exc)
                return False
            return await self._settle(plan, iter(results))
        finally:
            self._batches_in_flight -= 1
            for session, _, _ in plan:
                session.in_flight = False

    def _add_commands(
        self, commands: list[tuple[Any, ...]], session: SessionPublisher, item: _Item
    ) -> int:
        # Arguments as redis-py's xadd() builds them, without its per-call validation.
        if isinstance(item, _Audio):
            commands.append(("XADD", session.stream_key, *self._audio_trim, item.entry_id,
                             *chain.from_iterable(item.fields.items())))  # fmt: skip
            return 1
        fields = tuple(chain.from_iterable(item.fields.items()))
        count = 0
        if item.entry_id is not None:
            commands.append(("XADD", session.stream_key, *self._audio_trim, item.entry_id,
                             *fields))  # fmt: skip
            count += 1
        commands.append(("XADD", keys.EVENTS_STREAM, *self._events_trim, b"*", *fields))
        count += 1
        if item.closing and session.stream_key is not None:
            commands.append(("EXPIRE", session.stream_key, self._ttl))
            count += 1
        return count

    async def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send `commands` in one pipeline; replies in order, Redis error replies as
        ResponseError objects. Standalone Redis: one packed write and one read loop under a
        single timeout on a pooled connection (redis-py's Pipeline costs a timer and several
        calls per reply, the largest cost of the gateway's hot path). Cluster: a pipeline."""
        client = self._redis
        if not isinstance(client, redis.asyncio.Redis):
            pipe = client.pipeline(transaction=False)
            for args in commands:
                pipe.execute_command(*args)
            return await pipe.execute(raise_on_error=False)
        pool = client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            return await connection.retry.call_with_retry(  # type: ignore[no-any-return]
                lambda: self._round_trip(connection, commands),
                lambda error: connection.disconnect(),
            )
        finally:
            await pool.release(connection)

    async def _round_trip(self, connection: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        await connection.send_packed_command(pack_commands(commands))
        replies: list[Any] = []
        try:
            async with asyncio.timeout(self._read_timeout):
                for _ in commands:
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        replies.append(exc)
        except TimeoutError as exc:
            await connection.disconnect()  # replies still in flight: the socket is out of step
            raise RedisTimeoutError("timeout reading pipeline replies") from exc
        return replies

    async def _settle(
        self,
        plan: list[tuple[SessionPublisher, list[tuple[_Item, int]], int]],
        results: Iterator[Any],
    ) -> bool:
        outcomes: list[tuple[SessionPublisher, list[tuple[_Item, int]]]] = []
        duplicates: list[tuple[SessionPublisher, _Item]] = []
        for session, taken, extra in plan:
            per_item: list[tuple[_Item, int]] = []
            for item, count in taken:
                status = max(_classify(next(results)) for _ in range(count))
                if status == _DUPLICATE:
                    duplicates.append((session, item))
                per_item.append((item, status))
            for _ in range(extra):
                next(results)
            outcomes.append((session, per_item))
        confirmed = await self._check_duplicates(duplicates)
        all_done = True
        now = self._clock()
        published = 0
        for session, per_item in outcomes:
            for item, status in per_item:
                if status == _DUPLICATE:
                    status = confirmed.get(id(item), _RETRY)
                if status == _RETRY:
                    all_done = False
                    break
                session.queue.popleft()
                if isinstance(item, _Audio):
                    session.backlog_samples -= item.samples
                    self._backlog_frames -= 1
                    if status == _OK:
                        published += 1
                        session.frames_published += 1
                        PUBLISH_LATENCY.observe(now - item.received_at)
                    else:
                        session._lose(1)
                        session._fail("audio entry refused by redis")
                elif status == _OK:
                    EVENTS_PUBLISHED.labels(item.event_type).inc()
                else:
                    session._fail(f"{item.event_type} event refused by redis")
            if not session.queue:
                self._retire(session)
            else:  # round robin: sessions left out of a full batch go first next time
                self._pending.pop(session, None)
                self._pending[session] = None
        if published:
            FRAMES_PUBLISHED.inc(published)
        if all_done:
            self._set_ready(True)
        else:  # reachable but refusing writes (e.g. OOM, failover): not ready either
            REDIS_ERRORS.labels("publish").inc()
            self._set_ready(False)
        self._update_gauges()
        return all_done

    async def _check_duplicates(
        self, duplicates: list[tuple[SessionPublisher, _Item]]
    ) -> dict[int, int]:
        """An id refused as 'already there' is ours (a retry after a lost reply) only if the
        stored entry is identical; anything else is a foreign stream with this session id."""
        if not duplicates:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for session, item in duplicates:
            assert session.stream_key is not None
            assert item.entry_id is not None
            pipe.xrange(session.stream_key, item.entry_id, item.entry_id)
        try:
            found = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self._write_failed(exc)
            return {}
        verdict: dict[int, int] = {}
        for (_, item), entries in zip(duplicates, found, strict=True):
            if isinstance(entries, Exception):
                verdict[id(item)] = _RETRY
            elif entries and entries[0][1] == item.fields:
                verdict[id(item)] = _OK
            else:
                verdict[id(item)] = _FAILED
        return verdict

    def _retire(self, session: SessionPublisher) -> None:
        self._pending.pop(session, None)
        if session.closed and self._sessions.get(session.info.session_id) is session:
            del self._sessions[session.info.session_id]

    def _write_failed(self, exc: BaseException) -> None:
        REDIS_ERRORS.labels("publish").inc()
        if self._ready:
            log.warning(
                "redis write failed; retrying with backoff",
                extra={"error": type(exc).__name__, "backlog_frames": self._backlog_frames},
            )
        self._set_ready(False)
        self._update_gauges()

    def _set_ready(self, up: bool) -> None:
        if up and not self._ready:
            if self._was_up:
                REDIS_RECONNECTS.inc()
                log.info("redis reachable again", extra={"backlog_frames": self._backlog_frames})
            self._was_up = True
        elif not up and self._ready:
            log.warning("redis unavailable")
        self._ready = up
        REDIS_UP.set(1 if up else 0)

    def _update_gauges(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._gauges_at < _GAUGE_INTERVAL:
            return
        self._gauges_at = now
        PUBLISH_BACKLOG_FRAMES.set(self._backlog_frames)
        fill = 0.0
        for session in self._pending:
            fill = max(fill, session.backlog_samples / session.bound_samples)
        PUBLISH_BACKLOG_FILL_RATIO.set(fill)
