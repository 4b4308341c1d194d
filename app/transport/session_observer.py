"""What a live session's domain events mean for the rest of the gateway.

The protocol core reports facts (opened, audio frame, paused, client error, closed ...); this
module turns each into its Redis event, metrics and log line, and applies consumers'
commands to the session. It owns no socket: the connection hands it outputs in order.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
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
    InvalidStateError,
    LanguageUpdated,
    Output,
    Paused,
    PingReceived,
    ProtocolViolation,
    Resumed,
    SessionClosed,
    SessionOpened,
)
from app.publisher.publisher import SessionInfo, SessionPublisher

if TYPE_CHECKING:
    from app.control.plane import ControlCommand
    from app.runtime import Gateway
    from app.security.integrations import Integration
    from app.transport.admission import Admission
    from app.transport.websocket import Connection

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
METRICS_FLUSH_FRAMES = 5  # audio metrics lag live traffic by at most this many frames
AUTH_FAILURE_REASONS = {
    "org_mismatch": "organization header missing or different from open.organizationId",
    "org_not_allowed": "organization not allowed for this integration",
}


class SessionObserver:
    __slots__ = (
        "_bytes",
        "_connection",
        "_frames",
        "_log_budget",
        "_open_received_at",
        "_quiet",
        "_registered",
        "_seconds",
        "_unreported",
        "admission",
        "gateway",
        "integration",
        "log_fields",
        "publisher",
        "session",
    )

    def __init__(self, gateway: Gateway, admission: Admission, connection: Connection) -> None:
        self.gateway = gateway
        self.admission = admission
        # Weak: the connection holds its observer, and an ended session must be freed by
        # reference counting. Cycles left to the collector are walked by its full passes,
        # which grow with every live session and stall the event loop for all of them.
        self._connection = weakref.ref(connection)
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
        self._frames = metrics.AUDIO_FRAMES_RECEIVED.labels(self.integration)
        self._bytes = metrics.AUDIO_RECEIVED_BYTES.labels(self.integration)
        self._seconds = metrics.AUDIO_RECEIVED_SECONDS.labels(self.integration)
        self._unreported = [0, 0, 0]  # frames, bytes, samples not yet added to the metrics
        # A connection that failed authentication was logged once (throttled) by admission;
        # its lifecycle is counted in the metrics but not logged: connections are the
        # client's to open, and nothing it sends may cost more than counting.
        self._quiet = not admission.authenticated
        self._log_budget = SESSION_LOG_BUDGET
        metrics.SESSIONS_STARTED.labels(self.integration).inc()
        metrics.SESSIONS_ACTIVE.labels(self.integration).inc()
        if not self._quiet:
            log.info("session connected", extra=self.log_fields)

    # --- the hot path -------------------------------------------------------------------------
    def audio(self, frame: AudioFrame, now: float) -> None:
        """`now`: when it was received, on the publisher's clock (time.monotonic)."""
        # Counted here and added to the metrics every second of frames and at the end:
        # three counter updates (each taking a lock) per frame were a visible hot-path cost.
        unreported = self._unreported
        unreported[0] += 1
        unreported[1] += len(frame.data)
        unreported[2] += frame.sample_count
        if unreported[0] >= METRICS_FLUSH_FRAMES:
            self._report_audio()
        if self.publisher is not None:
            self.publisher.audio(frame.data, frame.sample_offset, frame.sample_count, now)

    def _report_audio(self) -> None:
        frames, size, samples = self._unreported
        if frames:
            self._frames.inc(frames)
            self._bytes.inc(size)
            self._seconds.inc(samples / SAMPLE_RATE)
            # Reset in place: a new list every few frames, each living until the next flush,
            # was promoted to the collector's oldest generation by the thousand per second
            # and set off full collections (pauses of 200+ ms at 2,000 calls).
            self._unreported[:] = (0, 0, 0)

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
        connection = self._connection()
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
        self._report_audio()
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
        self._report_audio()
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
        # The publisher's overflow callback refers to this observer: without this, each ended
        # session would be a reference cycle left for the collector (see __init__).
        self.publisher = None

    def event(self, output: Output) -> None:
        """Every domain event other than audio, open and close."""
        if isinstance(output, Paused):
            self._publish("paused", {"position": format_duration(output.position_samples)})
        elif isinstance(output, Resumed):
            self._publish(
                "resumed",
                {
                    "start": format_duration(output.start_samples),
                    "discarded": format_duration(output.discarded_samples),
                },
            )
        elif isinstance(output, Discarded):
            self._publish(
                "discarded",
                {
                    "start": format_duration(output.start_samples),
                    "discarded": format_duration(output.discarded_samples),
                },
            )
        elif isinstance(output, LanguageUpdated):
            self._publish("language_updated", {"language": output.language})
        elif isinstance(output, ClientError):
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
        elif isinstance(output, CloseRequested):
            self._publish(
                "closing",
                {"reason": output.reason, "position": format_duration(output.position_samples)},
            )
        elif isinstance(output, CloseWindowEnded):
            metrics.CLOSE_WINDOWS.labels(self.integration, output.outcome).inc()
            metrics.CLOSE_WINDOW_SECONDS.observe(output.seconds)
            if output.outcome == "expired":  # no consumer said `finish` in time
                self._log(
                    logging.INFO,
                    "close window expired",
                    extra={**self.log_fields, "seconds": round(output.seconds, 3)},
                )
        elif isinstance(output, PingReceived):
            if output.rtt_seconds is not None:
                metrics.CLIENT_RTT.observe(output.rtt_seconds)
        elif isinstance(output, ProtocolViolation):
            metrics.PROTOCOL_ERRORS.labels(output.kind).inc()
            self._log(
                logging.WARNING,
                "protocol violation",
                extra={**self.log_fields, "kind": output.kind, "info": output.info},
            )
        elif isinstance(output, DisconnectSent):
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
        self.event(output)

    # --- trouble ------------------------------------------------------------------------------
    def _publishing_failed(self) -> None:
        # The publisher has logged and counted why (backlog overflow or a failed write).
        self._end_with_error("Server Error: audio backlog overflow")

    def _end_with_error(self, info: str) -> None:
        connection = self._connection()
        if connection is not None:  # else the session is over already
            connection.end_with_error(info)

    def oversized_message(self) -> None:
        metrics.PROTOCOL_ERRORS.labels("message_too_large").inc()
        log.warning("message above the WebSocket size limit; socket closed", extra=self.log_fields)

    def outgoing_overflow(self) -> None:
        metrics.CONNECTIONS_REJECTED.labels("client_not_reading").inc()
        log.warning("client stopped reading; closing socket", extra=self.log_fields)

    def client_rate_limit(self, retry_after: float | None) -> None:
        """The client answered `error` 429: hold consumers' `event` commands as it asked."""
        seconds = retry_after if retry_after is not None else DEFAULT_RETRY_AFTER_SECONDS
        self.gateway.control.client_retry_after(self.admission.session_id, seconds)

    # --- consumer commands --------------------------------------------------------------------
    def apply_command(
        self, command: ControlCommand, dispatch: Callable[[list[Output]], None]
    ) -> str:
        session = self.session
        now = time.monotonic()
        name = command.command
        try:
            if name == "pause":
                dispatch(session.pause(now))
            elif name == "resume":
                dispatch(session.resume(now))
            elif name == "disconnect":
                dispatch(session.disconnect(command.reason, command.info, now))
            elif name == "event":
                dispatch(session.send_event(command.entities, now))
                metrics.EVENT_MESSAGES_SENT.labels(self.integration).inc()
            elif name == "finish":
                dispatch(session.finish(now))
            else:
                return "invalid"
        except InvalidStateError:
            return "invalid_state"
        return "applied"
