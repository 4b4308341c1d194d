"""What a live session's domain events mean for the rest of the gateway.

The protocol core reports facts (opened, audio frame, paused, client error, closed ...); this
module turns each into its Redis event, metrics and log line, and registers the session with
the control plane while it is open. It owns no socket and decides nothing about the outputs:
the connection's `_dispatch` tells them apart and calls the method for each, in order.
Consumers' commands are applied by the connection (`Connection.apply`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from app.observability import metrics
from app.protocol.messages import format_duration
from app.protocol.session import (
    AudioFrame,
    ClientError,
    CloseRequested,
    CloseWindowEnded,
    Discarded,
    DisconnectSent,
    LanguageUpdated,
    Paused,
    PingReceived,
    ProtocolViolation,
    Resumed,
    SessionClosed,
    SessionOpened,
)
from app.publisher.publisher import SessionInfo, SessionPublisher

if TYPE_CHECKING:
    from app.security.integrations import Integration
    from app.transport.admission import Admission
    from app.transport.connection import Connection
    from app.transport.host import ReporterHost

log = logging.getLogger("app.session")

UNKNOWN_INTEGRATION = "unknown"
SAMPLE_RATE = 8000
DEFAULT_RETRY_AFTER_SECONDS = 1.0
# The error codes the protocol defines; anything else is counted as "other" (bounded labels).
CLIENT_ERROR_CODES = frozenset({400, 405, 408, 409, 413, 415, 429, 500, 503})
MAX_LOGGED_ERROR_CHARS = 500
# Lines a session may log about its messages (errors, violations, disconnects) beyond the
# one-per-session lifecycle lines; the rest are counted and summed up once at the end.
SESSION_LOG_BUDGET = 20
AUDIO_METRICS_INTERVAL_SECONDS = 1.0  # how often the gateway calls flush_audio_tallies
AUTH_FAILURE_REASONS = {
    "org_mismatch": "organization header missing or different from open.organizationId",
    "org_not_allowed": "organization not allowed for this integration",
}


class AudioTally:
    """The audio one integration's live sessions received that its counters do not show yet.

    A prometheus_client counter update takes a lock and runs about a microsecond of
    interpreted code: three of them per session every second were a few per cent of the
    worker's CPU at 1,000 calls. Each frame only adds to its integration's tally here; the
    gateway adds the tallies to the counters every `AUDIO_METRICS_INTERVAL_SECONDS`
    (`flush_audio_tallies`), and a session's end flushes its integration's tally, so a
    finished call's audio is counted in full at once.
    """

    __slots__ = ("_bytes", "_frames", "_seconds", "frames", "samples", "size")

    def __init__(self, integration: str) -> None:
        self.frames = 0
        self.size = 0
        self.samples = 0
        self._frames = metrics.AUDIO_FRAMES_RECEIVED.labels(integration)
        self._bytes = metrics.AUDIO_RECEIVED_BYTES.labels(integration)
        self._seconds = metrics.AUDIO_RECEIVED_SECONDS.labels(integration)

    def flush(self) -> None:
        if self.frames:
            self._frames.inc(self.frames)
            self._bytes.inc(self.size)
            self._seconds.inc(self.samples / SAMPLE_RATE)
            self.frames = self.size = self.samples = 0


# One per integration name (configured names and "unknown": a bounded set, as the labels are).
_audio_tallies: dict[str, AudioTally] = {}


def audio_tally(integration: str) -> AudioTally:
    tally = _audio_tallies.get(integration)
    if tally is None:
        tally = _audio_tallies[integration] = AudioTally(integration)
    return tally


def flush_audio_tallies() -> None:
    """Add the audio received since the last flush to the metrics (the gateway, every
    `AUDIO_METRICS_INTERVAL_SECONDS`)."""
    for tally in _audio_tallies.values():
        tally.flush()


class SessionReporter:
    """Reports one session: its Redis events, metrics and log lines."""

    __slots__ = (
        "_audio",
        "_connection",
        "_log_budget",
        "_open_received_at",
        "_quiet",
        "_registered",
        "admission",
        "gateway",
        "integration",
        "log_fields",
        "publisher",
        "session",
    )

    def __init__(self, gateway: ReporterHost, admission: Admission, connection: Connection) -> None:
        self.gateway = gateway
        self.admission = admission
        # The connection holds its reporter: this reference back is dropped when the connection
        # ends (`forget_connection`), so an ended session is freed by reference counting.
        # Cycles left to the collector are walked by its full passes, which grow with every
        # live session and stall the event loop for all of them. (Not a weak reference: the
        # compiled Connection cannot be referred to weakly.)
        self._connection: Connection | None = connection
        self.session = connection.session
        self.integration = (
            admission.integration.name if admission.integration else UNKNOWN_INTEGRATION
        )
        self._open_received_at = 0.0
        self.log_fields: dict[str, Any] = {
            "session_id": admission.session_id,
            "correlation_id": admission.correlation_id,
            "integration": self.integration,
            "client_address": admission.client_address,
        }
        self.publisher: SessionPublisher | None = None
        self._registered = False
        self._audio = audio_tally(self.integration)
        # A connection that failed authentication was logged once (throttled) by admission;
        # its lifecycle is counted in the metrics but not logged: connections are the
        # client's to open, and nothing it sends may cost more than counting.
        self._quiet = not admission.authenticated
        self._log_budget = SESSION_LOG_BUDGET
        metrics.SESSIONS_STARTED.labels(self.integration).inc()
        metrics.SESSIONS_ACTIVE.labels(self.integration).inc()
        # At DEBUG: an accepted call's lines at INFO are "session opened" and "session closed"
        # (which every session logs, opened or not, with these fields and more).
        if not self._quiet:
            log.debug("session connected", extra=self.log_fields)

    # --- the hot path -------------------------------------------------------------------------
    def audio(self, frame: AudioFrame, now: float) -> None:
        """`now`: when it was received, on the publisher's clock (time.monotonic)."""
        tally = self._audio  # added to the metrics by the gateway (AudioTally)
        tally.frames += 1
        tally.size += len(frame.data)
        tally.samples += frame.sample_count
        if self.publisher is not None:
            self.publisher.audio(frame.data, frame.sample_offset, frame.sample_count, now)

    # --- lifecycle ----------------------------------------------------------------------------
    def opened(self, event: SessionOpened) -> None:
        self._open_received_at = event.open_received_at
        self.log_fields["conversation_id"] = event.conversation_id
        self.log_fields["organization_id"] = event.organization_id
        if event.is_probe:
            metrics.PROBES.labels(self.integration).inc()
        integration = self.admission.integration
        try:
            self.publisher = self._open_publisher(event, integration)
        except ValueError as exc:  # a session id already live here, or an unknown key id
            log.error("session cannot be published", extra={**self.log_fields, "error": str(exc)})
            self._end_with_error("Server Error: session cannot be recorded")
            return
        self.publisher.event(
            "opened",
            {
                "participant": event.participant,
                "language": event.language,
                "offered_media": event.offered_media,
                "custom_config": event.custom_config,
                "continued_sessions": event.continued_sessions,
                "start_paused": event.start_paused,
                # transcription: the client's `close` waits for the consumer's `finish`
                "mode": integration.mode if integration else "monitor",
            },
        )
        connection = self._connection
        if connection is not None:
            self.gateway.control.register(event.session_id, connection)
        self._registered = True
        log.info(
            "session opened",
            extra={
                **self.log_fields,
                "probe": event.is_probe,
                "media": event.selected_offer,
                "language": event.language,
            },
        )

    def opened_sent(self, now: float) -> None:
        """`opened` left the socket: the open latency the client saw (less the network)."""
        metrics.OPEN_LATENCY.observe(max(0.0, now - self._open_received_at))

    def _open_publisher(
        self, event: SessionOpened, integration: Integration | None
    ) -> SessionPublisher:
        info = SessionInfo(
            session_id=event.session_id,
            correlation_id=self.admission.correlation_id,
            integration=self.integration,
            organization_id=event.organization_id,
            conversation_id=event.conversation_id,
            is_probe=event.is_probe,
            media=event.media,
            encryption_key_id=integration.encryption_key_id if integration else None,
        )
        return self.gateway.publisher.open_session(info, on_failure=self._publishing_failed)

    def closed(self, event: SessionClosed) -> None:
        self._audio.flush()
        outcome = event.reason or "dropped"
        metrics.SESSIONS_ENDED.labels(self.integration, outcome).inc()
        counts = {"frames": event.frames, "bytes": event.bytes, "samples": event.samples}
        if event.frames_dropped:
            metrics.AUDIO_FRAMES_DROPPED.labels(self.integration).inc(event.frames_dropped)
            counts["frames_dropped"] = event.frames_dropped
        if self.publisher is not None:
            self.publisher.close(event.reason, counts)
        if not self._quiet:
            log.info("session closed", extra={**self.log_fields, "reason": outcome, **counts})

    async def finished(self) -> None:
        self._audio.flush()
        after_end = self.session.messages_after_end
        if after_end:
            metrics.MESSAGES_AFTER_END.labels(self.integration).inc(after_end)
        suppressed = -self._log_budget if self._log_budget < 0 else 0
        if suppressed:
            metrics.LOG_LINES_SUPPRESSED.inc(suppressed)
        if (after_end or suppressed) and not self._quiet:
            log.info(
                "session ended noisily",
                extra={
                    **self.log_fields,
                    "messages_after_end": after_end,
                    "log_lines_suppressed": suppressed,
                },
            )
        if self._registered:
            self.gateway.control.unregister(self.admission.session_id)
        metrics.SESSIONS_ACTIVE.labels(self.integration).dec()
        # The publisher's failure callback refers to this reporter: without this, each ended
        # session would be a reference cycle left for the collector (see __init__).
        self.publisher = None

    # --- what the session reports (the connection's `_dispatch` tells them apart) -------------
    def paused(self, output: Paused) -> None:
        self._publish("paused", {"position": format_duration(output.position_samples)})

    def resumed(self, output: Resumed) -> None:
        self._publish(
            "resumed",
            {
                "start": format_duration(output.start_samples),
                "discarded": format_duration(output.discarded_samples),
            },
        )

    def discarded(self, output: Discarded) -> None:
        self._publish(
            "discarded",
            {
                "start": format_duration(output.start_samples),
                "discarded": format_duration(output.discarded_samples),
            },
        )

    def language_updated(self, output: LanguageUpdated) -> None:
        self._publish("language_updated", {"language": output.language})

    def client_error(self, output: ClientError) -> None:
        code = str(output.code) if output.code in CLIENT_ERROR_CODES else "other"
        metrics.CLIENT_ERRORS.labels(code).inc()
        self._publish(
            "client_error",
            {
                "code": output.code,
                "message": output.message,
                "retry_after": output.retry_after_seconds,
            },
        )
        self._log(
            logging.WARNING,
            "client reported an error",
            extra={
                **self.log_fields,
                "code": output.code,
                "error_message": output.message[:MAX_LOGGED_ERROR_CHARS],
            },
        )

    def close_requested(self, output: CloseRequested) -> None:
        self._publish(
            "closing",
            {"reason": output.reason, "position": format_duration(output.position_samples)},
        )

    def close_window_ended(self, output: CloseWindowEnded) -> None:
        metrics.CLOSE_WINDOWS.labels(self.integration, output.outcome).inc()
        metrics.CLOSE_WINDOW_SECONDS.observe(output.seconds)
        if output.outcome == "expired":  # no consumer said `finish` in time
            self._log(
                logging.INFO,
                "close window expired",
                extra={**self.log_fields, "seconds": round(output.seconds, 3)},
            )

    def ping_received(self, output: PingReceived) -> None:
        if output.rtt_seconds is not None:
            metrics.CLIENT_RTT.observe(output.rtt_seconds)

    def protocol_violation(self, output: ProtocolViolation) -> None:
        metrics.PROTOCOL_ERRORS.labels(output.kind).inc()
        self._log(
            logging.WARNING,
            "protocol violation",
            extra={**self.log_fields, "kind": output.kind, "info": output.info},
        )

    def disconnect_sent(self, output: DisconnectSent) -> None:
        metrics.DISCONNECTS_SENT.labels(self.integration, output.reason).inc()
        if output.cause is not None and output.reason == "error":  # open or idle timeout
            metrics.PROTOCOL_ERRORS.labels(output.cause).inc()
        self._log(
            logging.INFO,
            "disconnect sent",
            extra={**self.log_fields, "reason": output.reason, "info": output.info},
        )

    def _log(self, level: int, message: str, extra: dict[str, Any]) -> None:
        """A line about one of the client's messages, within the session's log budget."""
        if self._quiet:
            return
        self._log_budget -= 1
        if self._log_budget >= 0:
            log.log(level, message, extra=extra)

    def _publish(self, event_type: str, fields: dict[str, Any]) -> None:
        if self.publisher is not None:
            self.publisher.event(event_type, fields)

    def unauthorized(self, output: DisconnectSent) -> None:
        """An authentication failure found by the session (organization checks at `open`);
        failures found at the upgrade were counted by admission already."""
        # A connection that already failed verification was counted at admission.
        if output.cause is not None and self.admission.authenticated:
            metrics.CONNECTIONS_REJECTED.labels(output.cause).inc()
            reason = AUTH_FAILURE_REASONS.get(output.cause, output.cause)
            log.warning("authentication failed", extra={**self.log_fields, "reason": reason})

    # --- trouble ------------------------------------------------------------------------------
    def _publishing_failed(self) -> None:
        # The publisher has logged and counted why (backlog overflow or a failed write).
        self._end_with_error("Server Error: audio backlog overflow")

    def _end_with_error(self, info: str) -> None:
        connection = self._connection
        if connection is not None:  # else the session is over already
            connection.end_with_error(info)

    def forget_connection(self) -> None:
        """The connection has ended: let go of it (see __init__)."""
        self._connection = None

    def oversized_message(self) -> None:
        metrics.PROTOCOL_ERRORS.labels("message_too_large").inc()
        self._log(
            logging.WARNING,
            "message above the WebSocket size limit; socket closed",
            self.log_fields,
        )

    def outgoing_overflow(self) -> None:
        metrics.CONNECTIONS_REJECTED.labels("client_not_reading").inc()
        self._log(logging.WARNING, "client stopped reading; closing socket", self.log_fields)

    def event_message_sent(self) -> None:
        """A consumer's `event` command was sent to the client."""
        metrics.EVENT_MESSAGES_SENT.labels(self.integration).inc()

    def client_rate_limit(self, retry_after: float | None) -> None:
        """The client answered `error` 429: hold consumers' `event` commands as it asked."""
        seconds = retry_after if retry_after is not None else DEFAULT_RETRY_AFTER_SECONDS
        self.gateway.control.client_retry_after(self.admission.session_id, seconds)
