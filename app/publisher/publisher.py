"""Audio frames and session events to Redis Streams: bounded, batched, in order, never blocking.

The transport calls `SessionPublisher.audio()` / `.event()` / `.close()` from its receive loop;
they only append to the session's queue and return. One writer task drains all queues with
pipelined XADDs. If Redis is slow or down the queues grow, each up to its bound (seconds of
audio), while the writer retries with backoff; then they drain in order. A session whose queue
is full is lost to publishing: `audio()` returns False, `on_failure()` is called once (the
transport ends that session with `disconnect` error), and its rejected frames are counted; a
session whose entry Redis refuses for good gets `on_failure()` too.

Sessions with queued entries wait in `_pending`, in order; each round trip takes a fair share
of every session's queue head. A failed write is retried with exponential backoff while the
queues grow within their bounds; readiness (REDIS_UP) follows the outcome of the writes.

Stream and event schema: app/publisher/schema.py.

Modules: this one (`Publisher`: the sessions of the process, the writer task and its loop),
schema.py (what the streams hold), session_queue.py (`SessionPublisher`: one session's entries
and bounded queue, and `QueueOwner`, the seam between it and the publisher), outcomes.py (what
Redis answered, duplicate check after a retry), app/redis/resp.py (RESP packing and the
pipelined round trip).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING, Any

import redis.asyncio
from redis.exceptions import RedisError

from app.observability.histogram_tally import HistogramTally
from app.observability.metrics import (
    EVENTS_PUBLISHED,
    FRAMES_PUBLISHED,
    PUBLISH_BACKLOG_FILL_RATIO,
    PUBLISH_BACKLOG_FRAMES,
    PUBLISH_LATENCY,
    REDIS_ERRORS,
    REDIS_RECONNECTS,
    REDIS_UP,
)
from app.publisher.outcomes import DUPLICATE, OK, RETRY, Outcome, classify, confirm_duplicates
from app.publisher.payload_crypto import PayloadCipher, parse_keys
from app.publisher.session_queue import (
    QueuedAudio,
    QueuedEvent,
    QueuedItem,
    SessionInfo,
    SessionPublisher,
)
from app.redis import keys
from app.redis.client import RedisClient, ping
from app.redis.resp import PipelineConnection, pack_commands, pack_head
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

_BACKOFF_START = 0.05
_GAUGE_INTERVAL = 0.25
_OVERLAP_AFTER_SECONDS = 0.004  # how long a second batch waits for the first to come back
# How long a writer that found nothing to write waits, once woken, for more entries to join
# its batch. A round trip costs far more CPU than the entries it carries: at a few thousand
# frames per second, written as they come, most batches held one or two frames.
_LINGER_SECONDS = 0.004
# A writer waiting for more entries (the linger, or the overlap wait) stops waiting once this
# many new ones are queued: waiting only pays off for a small batch. Frames that arrive in a
# burst (calls whose frames line up) would otherwise wait for nothing; at an even 10,000 frames
# a second this many arrive in about the linger anyway.
_FULL_BATCH_ENTRIES = 32


class Publisher:
    """All sessions of the process, and one writer task for them (two batches in flight)."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        health_interval: float = 1.0,
        linger_seconds: float = _LINGER_SECONDS,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._batch_max = settings.publish_batch_max
        self._retry_max = settings.publish_retry_max_seconds
        self._ttl = settings.stream_ttl_seconds
        self._audio_trim = (b"MAXLEN", b"~", b"%d" % settings.audio_stream_maxlen)
        self._events_trim = (b"MAXLEN", b"~", b"%d" % settings.events_stream_maxlen)
        self._read_timeout = settings.redis_timeout_seconds
        self._expiry_refresh = min(self._ttl / 4, 60.0)
        self._health_interval = health_interval
        self._sessions: dict[str, SessionPublisher] = {}
        self._pending: dict[SessionPublisher, None] = {}  # sessions with queued items, in order
        self._backlog_frames = 0
        # Entries queued since a writer last found nothing to write; idle writers wait in
        # `_idle_writers` (a future each: asyncio.Event is interpreted code, and `enqueued`
        # runs for every frame).
        self._woken = False
        self._idle_writers: list[asyncio.Future[bool]] = []
        self._linger_seconds = linger_seconds
        self._arrived_since_batch = 0  # entries queued since a writer last looked for a batch
        self._lingering: list[asyncio.Future[bool]] = []  # writers waiting for a fuller batch
        # When each round trip now out was sent (their count: batches in flight). For the load
        # shedder (take_round_trip_seconds), also the slowest one that came back since it last
        # asked, and when Redis was last found up: a round trip's wait counts from then, since
        # waiting out an outage is readiness's business, not the shedder's (once Redis is back,
        # new calls must not be refused for it).
        self._round_trips_sent_at: list[float] = []
        self._slowest_round_trip = 0.0
        self._up_since = float("-inf")
        self._backoff = _BACKOFF_START
        self._retry_at = float("-inf")  # on the event loop's clock
        self._ready = False
        self._was_up = False
        # What this publisher last set REDIS_UP to (one publisher per process: the gateway's).
        self._gauge_up: bool | None = None
        self._gauges_at = float("-inf")
        # Published frames' latencies (and so their count), added to the metrics with the
        # gauges (a few times a second, when the writers are idle, and every second from the
        # gateway): per round trip they took locks and interpreted code for every frame.
        self._latencies = HistogramTally(PUBLISH_LATENCY)
        self.backlog_seconds = settings.publish_backlog_seconds
        self.probe_events = settings.publish_probe_events
        self._keys = parse_keys(settings.payload_encryption_keys.get_secret_value())
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Redis answered the last write or health check."""
        return self._ready

    @property
    def backlog_frames(self) -> int:
        return self._backlog_frames

    def has_key(self, key_id: str) -> bool:
        return key_id in self._keys

    def take_round_trip_seconds(self) -> float:
        """How long Redis takes to answer this worker's writes, since the last call: the
        slowest round trip that came back since then, or how long the oldest one still out
        has waited, whichever is longer (the load shedder asks every 50 ms). Round trips, not
        frames' ages: audio that waited out a Redis outage is acknowledged late, but a Redis
        that answers quickly again is keeping up. While Redis is down this is 0: readiness
        refuses new calls then."""
        slowest = self._slowest_round_trip
        self._slowest_round_trip = 0.0
        if self._round_trips_sent_at and self._ready:
            slowest = max(slowest, self._waited_while_up(self._round_trips_sent_at[0]))
        return slowest

    def _waited_while_up(self, sent_at: float) -> float:
        return self._clock() - max(sent_at, self._up_since)

    # --- lifecycle ----------------------------------------------------------------------------
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
            self._wake()
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
                session.lose(frames)
                log.error(
                    "publisher stopped with unwritten audio",
                    extra=session.log_fields("shutdown"),
                )
            session.queue.clear()
            session.backlog_samples = 0
        self._pending.clear()
        self._backlog_frames = 0
        self._update_metrics(force=True)  # and what was published, to the metrics

    # --- sessions -----------------------------------------------------------------------------
    def open_session(self, info: SessionInfo, on_failure: Callable[[], None]) -> SessionPublisher:
        """Start publishing a session. ValueError: the session id is already live here, or
        the integration's encryption key id is not configured. `on_failure` is called once
        when the session can no longer be published (its backlog overflowed, or Redis refused
        one of its entries for good)."""
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
        session = SessionPublisher(self, info, on_failure, cipher)
        self._sessions[info.session_id] = session
        return session

    # --- the seam to the session queues (session_queue.QueueOwner) ----------------------------
    def audio_command_head(self, stream_key: str) -> bytes | None:
        """The RESP of a session's audio XADD up to its entry id, so that entries are packed
        as they are queued; None when commands go to Redis Cluster as argument tuples."""
        if not isinstance(self._redis, redis.asyncio.Redis):
            return None
        return pack_head(12, "XADD", stream_key, *self._audio_trim)

    def enqueued(self, session: SessionPublisher, *, audio: bool) -> None:
        """`session` queued an entry (`audio`: a frame): it joins the sessions to write."""
        if audio:
            self._backlog_frames += 1
        if session not in self._pending:
            self._pending[session] = None
        if not self._woken:
            self._wake()
        self._arrived_since_batch += 1
        if self._lingering and self._arrived_since_batch >= _FULL_BATCH_ENTRIES:
            _release_all(self._lingering)

    # --- the writer -----------------------------------------------------------------------------
    async def _run(self) -> None:
        # Up to two batches in flight: frames that arrive during a slow round trip leave in a
        # second batch instead of waiting for it. A session is in one batch at a time, so its
        # entries stay in order (and a retried entry never follows a later one).
        await asyncio.gather(*(self._writer(checks_health=index == 0) for index in range(2)))

    async def _writer(self, *, checks_health: bool) -> None:
        connection = PipelineConnection(self._redis)
        try:
            await self._write_batches(connection, checks_health=checks_health)
        finally:
            await connection.close()

    async def _write_batches(self, connection: PipelineConnection, *, checks_health: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pause = self._retry_at - loop.time()
            if pause > 0:  # after a failed write both writers wait out the same backoff
                await asyncio.sleep(pause)
            written = await self._write_batch(connection)
            if written is None:  # nothing to write, or only what the other writer has out
                self._woken = False
                if not self._pending:
                    # All written: the metrics catch up, at most a few times a second (writers
                    # go idle between most round trips; the gateway also reports every second).
                    self._update_metrics()
                if checks_health:
                    # Timed even while the other writer has entries out: it may be the last
                    # round trip before a quiet spell, and nothing would wake this one then.
                    released = await _wait_in(self._idle_writers, self._health_interval)
                    if not released and not self._pending:
                        self._set_ready(await ping(self._redis))  # idle that long: checked
                else:
                    await _wait_in(self._idle_writers, None)
                # Only overlap a round trip that is slow: a quick one takes these frames
                # itself, and many small batches would cost more CPU than one large one.
                await self._linger(
                    _OVERLAP_AFTER_SECONDS if self._round_trips_sent_at else self._linger_seconds
                )
            elif written:
                self._backoff = _BACKOFF_START
            else:
                self._retry_at = loop.time() + self._backoff
                self._backoff = min(self._backoff * 2, self._retry_max)

    async def _linger(self, seconds: float) -> None:
        """Wait up to `seconds` for more entries to join the next batch; not at all once it
        is full (`_FULL_BATCH_ENTRIES`)."""
        if self._arrived_since_batch >= _FULL_BATCH_ENTRIES:
            return
        await _wait_in(self._lingering, seconds)

    def _wake(self) -> None:
        self._woken = True
        _release_all(self._idle_writers)

    async def _write_batch(self, connection: PipelineConnection) -> bool | None:
        """One pipelined round trip; True unless something must be retried, None when there
        was nothing to write."""
        commands: list[Any] = []  # argument tuples, or lists of bytes packed already
        plan: list[tuple[SessionPublisher, list[tuple[QueuedItem, int]], int]] = []
        self._arrived_since_batch = 0  # what is queued now joins this batch or waits for it
        budget = self._batch_max
        per_session = max(1, budget // max(1, len(self._pending)))
        now = self._clock()
        for session in list(self._pending):
            if session.in_flight:
                continue
            if not session.queue:
                self._retire(session)
                continue
            taken: list[tuple[QueuedItem, int]] = []
            extra = 0
            for index, item in enumerate(session.queue):
                # An event waits for the audio queued before it to be acknowledged, so that on
                # Redis Cluster (other slot) `closed` never overtakes the session's audio.
                if index >= per_session or budget <= 0 or (index and isinstance(item, QueuedEvent)):
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
        sent_at = self._clock()
        self._round_trips_sent_at.append(sent_at)
        try:
            try:
                results = await connection.execute(commands, self._read_timeout)
            except (RedisError, OSError) as exc:
                self._write_failed(exc)
                return False
            return await self._settle(plan, results)
        finally:
            self._round_trips_sent_at.remove(sent_at)
            if self._ready:  # one that failed, or was refused, is readiness's business too
                self._slowest_round_trip = max(
                    self._slowest_round_trip, self._waited_while_up(sent_at)
                )
            for session, _, _ in plan:
                session.in_flight = False

    def _add_commands(
        self, commands: list[Any], session: SessionPublisher, item: QueuedItem
    ) -> int:
        # Arguments as redis-py's xadd() builds them, without its per-call validation.
        if isinstance(item, QueuedAudio):
            if item.command is not None:  # the audio follows its packed head, uncopied
                commands.append([item.command, item.audio, b"\r\n"])
                return 1
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

    async def _settle(
        self,
        plan: list[tuple[SessionPublisher, list[tuple[QueuedItem, int]], int]],
        results: list[Any],
    ) -> bool:
        outcomes: list[tuple[SessionPublisher, list[tuple[QueuedItem, Outcome]]]] = []
        duplicates: list[tuple[SessionPublisher, QueuedItem]] = []
        # The replies by position: next() on an iterator is, in compiled code, a lookup in
        # builtins and a call for every reply.
        position = 0
        for session, taken, extra in plan:
            per_item: list[tuple[QueuedItem, Outcome]] = []
            for item, count in taken:
                if count == 1:
                    status = classify(results[position])
                else:
                    status = max(classify(results[position + i]) for i in range(count))
                position += count
                if status == DUPLICATE:
                    duplicates.append((session, item))
                per_item.append((item, status))
            position += extra
            outcomes.append((session, per_item))
        try:
            confirmed = await confirm_duplicates(self._redis, duplicates)
        except (RedisError, OSError) as exc:
            self._write_failed(exc)
            confirmed = {}
        all_done = True
        now = self._clock()
        latencies = self._latencies
        for session, per_item in outcomes:
            for item, status in per_item:
                if status == DUPLICATE:
                    status = confirmed.get(item, RETRY)
                if status == RETRY:
                    all_done = False
                    break
                session.queue.popleft()
                if isinstance(item, QueuedAudio):
                    session.backlog_samples -= item.samples
                    self._backlog_frames -= 1
                    if status == OK:
                        session.frames_published += 1
                        latencies.observe(now - item.received_at)
                    else:
                        session.lose(1)
                        session.fail("audio entry refused by redis")
                elif status == OK:
                    EVENTS_PUBLISHED.labels(item.event_type).inc()
                else:
                    session.fail(f"{item.event_type} event refused by redis")
            if not session.queue:
                self._retire(session)
            else:  # round robin: sessions left out of a full batch go first next time
                self._pending.pop(session, None)
                self._pending[session] = None
        if all_done:
            self._set_ready(True)
        else:  # reachable but refusing writes (e.g. OOM, failover): not ready either
            REDIS_ERRORS.labels("publish").inc()
            self._set_ready(False)
        self._update_metrics()
        return all_done

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
        self._update_metrics()

    def health_checked(self, up: bool) -> None:
        """The outcome of the separate health check (a stall is seen before writes time out)."""
        self._set_ready(up)

    def _set_ready(self, up: bool) -> None:
        if up and not self._ready:
            if self._was_up:
                REDIS_RECONNECTS.inc()
                log.info("redis reachable again", extra={"backlog_frames": self._backlog_frames})
            self._was_up = True
            self._up_since = self._clock()
        elif not up and self._ready:
            log.warning("redis unavailable")
        self._ready = up
        if up != self._gauge_up:  # every round trip comes here: a gauge update takes a lock
            self._gauge_up = up
            REDIS_UP.set(1 if up else 0)

    def report_metrics(self) -> None:
        """Bring the backlog gauges and the published frames' counts up to date: the gateway
        calls this every second, so they follow a stalled Redis, when no round trip comes back
        to update them."""
        self._update_metrics(force=True)

    def _update_metrics(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._gauges_at < _GAUGE_INTERVAL:
            return
        self._gauges_at = now
        published = self._latencies.flush()  # one latency per frame published
        if published:
            FRAMES_PUBLISHED.inc(published)
        PUBLISH_BACKLOG_FRAMES.set(self._backlog_frames)
        fill = 0.0
        for session in self._pending:
            fill = max(fill, session.backlog_samples / session.bound_samples)
        PUBLISH_BACKLOG_FILL_RATIO.set(fill)


async def _wait_in(waiters: list[asyncio.Future[bool]], seconds: float | None) -> bool:
    """Wait, listed in `waiters`, until `_release_all(waiters)` (True) or for `seconds`
    (False; None: no limit). A timer of the event loop's own: asyncio.timeout is interpreted
    code."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[bool] = loop.create_future()
    timer = None if seconds is None else loop.call_later(seconds, _answer, waiter, False)
    waiters.append(waiter)
    try:
        return await waiter
    finally:
        if timer is not None:
            timer.cancel()
        waiters.remove(waiter)


def _answer(waiter: asyncio.Future[bool], released: bool) -> None:
    if not waiter.done():
        waiter.set_result(released)


def _release_all(waiters: list[asyncio.Future[bool]]) -> None:
    for waiter in waiters:
        _answer(waiter, True)
