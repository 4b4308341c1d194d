"""One session's side of publishing: its bounded queue of audio and event entries.

`SessionPublisher` turns what the transport hands it into the fields and ids of stream entries
(schema in app/publisher/schema.py) and queues them in order; it never touches Redis. The
publisher (app/publisher/publisher.py) drains the queue. Between the two is one seam each way:
the session sees its publisher as a `QueueOwner` (settings it needs, and `enqueued()` to join
the sessions to write), and the publisher uses the session's queue, counters and its public
`lose()`, `fail()` and `log_fields()`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from app.observability.metrics import FRAMES_LOST
from app.protocol.media import MediaFormat
from app.publisher.payload_crypto import PayloadCipher
from app.publisher.schema import F_AUDIO, F_KID, F_NONCE, F_OFFSET, F_SAMPLES, SCHEMA_VERSION
from app.redis import keys

log = logging.getLogger("app.streams.publisher")

_EVENT_SLACK = 64  # events accepted beyond a full queue, so `closed` always gets through


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


class QueuedAudio:
    """A frame waiting to be written. Its entry's id and fields are made when asked for (a
    write as argument tuples, the duplicate check after a retry); the usual write sends
    `command`, its XADD in RESP up to the audio, packed as it was queued, then the audio
    itself, uncopied. (Bytes, not a list or dict: an object the collector tracks, kept while
    queued, would be promoted to its oldest generation by the thousand per second.)"""

    __slots__ = ("audio", "command", "index", "received_at", "sample_offset", "samples", "sealed")

    def __init__(
        self,
        index: int,
        sample_offset: int,
        samples: int,
        audio: bytes,
        received_at: float,
        command: bytes | None = None,
        sealed: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.index = index  # the entry id's first part
        self.sample_offset = sample_offset
        self.samples = samples
        self.audio = audio  # sealed, when the integration encrypts its payloads
        self.received_at = received_at
        self.command = command
        self.sealed = sealed  # the key id and nonce of an encrypted payload

    @property
    def entry_id(self) -> bytes:
        return b"%d-0" % self.index

    @property
    def fields(self) -> dict[bytes, bytes]:
        fields = {F_OFFSET: b"%d" % self.sample_offset, F_SAMPLES: b"%d" % self.samples}
        if self.sealed is not None:
            fields[F_KID], fields[F_NONCE] = self.sealed
        fields[F_AUDIO] = self.audio
        return fields


class QueuedEvent:
    __slots__ = ("closing", "entry_id", "event_type", "fields")

    def __init__(
        self, event_type: str, fields: dict[bytes, bytes], entry_id: bytes | None, closing: bool
    ) -> None:
        self.event_type = event_type
        self.fields = fields
        self.entry_id = entry_id  # None: not written to a session stream (probe)
        self.closing = closing


QueuedItem = QueuedAudio | QueuedEvent


class QueueOwner(Protocol):
    """What a session's queue needs of the publisher that drains it."""

    @property
    def backlog_seconds(self) -> float:
        """How many seconds of audio a session's queue holds at most."""
        ...

    @property
    def probe_events(self) -> bool:
        """Whether probes' events are published."""
        ...

    def audio_command_head(self, stream_key: str) -> bytes | None:
        """The packed head of the session's audio XADDs, or None (see the publisher)."""
        ...

    def enqueued(self, session: SessionPublisher, *, audio: bool) -> None:
        """`session` queued an entry (`audio`: a frame)."""
        ...


def _wall_clock() -> bytes:
    return datetime.now(UTC).isoformat(timespec="milliseconds").encode()


def _audio_entry(index: int, sample_offset: int, sample_count: int, size: int) -> bytes:
    """The RESP of an audio XADD after its head (command, key, trim) up to the audio itself:
    the entry id, then the fields in `QueuedAudio.fields`'s order. One string built in
    compiled code: four bytes %-formats per frame cost several times as much."""
    entry, offset, count = str(index), str(sample_offset), str(sample_count)
    return (
        f"${len(entry) + 2}\r\n{entry}-0\r\n$6\r\noffset\r\n${len(offset)}\r\n{offset}\r\n"
        f"$7\r\nsamples\r\n${len(count)}\r\n{count}\r\n$5\r\naudio\r\n${size}\r\n"
    ).encode()


class SessionPublisher:
    """The publishing side of one session. Methods never block and never raise on Redis."""

    __slots__ = (
        "_audio_head",
        "_cipher",
        "_envelope",
        "_event_seq",
        "_kid",
        "_lost_metric",
        "_max_items",
        "_next_index",
        "_on_failure",
        "_publish_events",
        "_publisher",
        "backlog_samples",
        "bound_samples",
        "closed",
        "expiry_set_at",
        "failed",
        "frames_lost",
        "frames_published",
        "in_flight",
        "info",
        "queue",
        "stream_key",
    )

    def __init__(
        self,
        publisher: QueueOwner,
        info: SessionInfo,
        on_failure: Callable[[], None],
        cipher: PayloadCipher | None,
    ) -> None:
        self.info = info
        self._publisher = publisher
        self._on_failure = on_failure
        self._cipher = cipher
        self._kid = cipher.key_id.encode() if cipher else b""
        rate = info.media.rate if info.media else 8000
        self.bound_samples = max(1, int(publisher.backlog_seconds * rate))
        # Also bound the entry count: empty frames carry no samples but still cost memory.
        self._max_items = int(publisher.backlog_seconds * 100) + 100
        self.stream_key: str | None = None if info.is_probe else keys.audio_stream(info.session_id)
        self._audio_head = (
            publisher.audio_command_head(self.stream_key)
            if self.stream_key is not None and cipher is None
            else None
        )
        self._publish_events = publisher.probe_events or not info.is_probe
        self.queue: deque[QueuedItem] = deque()
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
                self.lose(1)
            return False
        if (
            self.backlog_samples + sample_count > self.bound_samples
            or len(self.queue) >= self._max_items
        ):
            self._overflow()
            return False
        index = self._next_index
        if self._cipher is not None:
            nonce, sealed = self._cipher.encrypt(sample_offset, data)
            item = QueuedAudio(
                index, sample_offset, sample_count, sealed, received_at, None, (self._kid, nonce)
            )
        else:
            head = self._audio_head
            command = None
            if head is not None:
                command = head + _audio_entry(index, sample_offset, sample_count, len(data))
            item = QueuedAudio(index, sample_offset, sample_count, data, received_at, command)
        self.queue.append(item)
        self._next_index += 1
        self.backlog_samples += sample_count
        self._publisher.enqueued(self, audio=True)
        return True

    def event(self, event_type: str, fields: Mapping[str, Any]) -> bool:
        """Queue a lifecycle event (types and schema: app/publisher/schema.py). False when the
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
        self._publisher.enqueued(self, audio=False)  # lets the writer retire the session

    def _queue_event(self, event_type: str, data: dict[str, Any], *, closing: bool) -> bool:
        if self.closed:
            return False
        if not self._publish_events:
            return True
        if len(self.queue) >= self._max_items + _EVENT_SLACK:
            log.error("event dropped: session backlog full", extra=self.log_fields(event_type))
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
        self.queue.append(QueuedEvent(event_type, fields, entry_id, closing))
        self._publisher.enqueued(self, audio=False)
        return True

    def _overflow(self) -> None:
        self.failed = True
        self.lose(1)
        log.warning(
            "publish backlog overflow: ending session",
            extra={**self.log_fields("overflow"), "backlog_seconds": self.backlog_seconds},
        )
        self._notify_failure()

    def fail(self, why: str) -> None:
        """Redis refused one of the session's entries for good (the publisher calls this)."""
        if not self.failed:
            self.failed = True
            log.error("session stream write failed: ending session", extra=self.log_fields(why))
            self._notify_failure()

    def _notify_failure(self) -> None:
        try:
            self._on_failure()
        except Exception:
            log.exception("on_failure callback failed", extra=self.log_fields("overflow"))

    def lose(self, frames: int) -> None:
        """Count `frames` of the session's audio as lost."""
        self.frames_lost += frames
        self._lost_metric.inc(frames)

    def log_fields(self, what: str) -> dict[str, Any]:
        """The session's ids for a log line about `what`."""
        return {
            "session_id": self.info.session_id,
            "correlation_id": self.info.correlation_id,
            "conversation_id": self.info.conversation_id,
            "integration": self.info.integration,
            "what": what,
            "frames_lost": self.frames_lost,
        }
