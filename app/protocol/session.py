"""ServerSession: the sans-I/O AudioHook v2 server state machine.

Feed it what the socket received and the current time; apply the returned outputs in order.
It owns no socket, clock, task or logger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal, TypeAlias

from app.protocol.media import SAMPLE_RATE, MediaFormat, MediaPolicy
from app.protocol.messages import (
    NULL_UUID,
    ClientEnvelope,
    ClientParameters,
    CloseParameters,
    DiscardedParameters,
    DisconnectReason,
    ErrorParameters,
    OpenParameters,
    PausedParameters,
    PingParameters,
    ProtocolError,
    ResumedParameters,
    ServerMessageType,
    UpdateParameters,
    ViolationKind,
    disconnect_parameters,
    encode_server_message,
    event_parameters,
    is_uuid,
    opened_parameters,
    parse_envelope,
    parse_parameters,
    reconnect_parameters,
)

UNAUTHORIZED_INFO = "Unauthorized"  # deliberately the same for every auth failure


class SessionState(StrEnum):
    PREPARING = "PREPARING"  # socket up, waiting for `open`
    OPENING = "OPENING"  # `open` received, `opened` not yet sent (authentication pending)
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    CLOSING = "CLOSING"  # `close` received; `closed` waits for the close window, if any
    CLOSED = "CLOSED"  # `closed` sent; waiting for the client to drop the socket
    SIGNALED_ERROR = "SIGNALED_ERROR"  # server sent `disconnect` error
    UNAUTHORIZED = "UNAUTHORIZED"  # server sent `disconnect` unauthorized
    DISCONNECTING = "DISCONNECTING"  # server sent `disconnect` completed; audio still drains
    FINALIZING = "FINALIZING"  # socket gone while authentication is still pending
    DISCONNECTED = "DISCONNECTED"  # socket gone; final


class InvalidStateError(Exception):
    """A server-initiated action is not allowed in the session's current state."""


# WebSocket close codes used when the server has to drop the socket itself.
CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_SERVER_ERROR: Final = 1011


# --- outputs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendText:
    """Send `text` as a WebSocket text frame (in list order)."""

    text: str
    message_type: str


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close the WebSocket; with `abort`, drop the TCP connection at once (a client that
    would not stop sending gets no close handshake to prolong)."""

    code: int
    reason: str
    abort: bool = False


@dataclass(frozen=True, slots=True)
class SessionOpened:
    session_id: str
    organization_id: str
    conversation_id: str
    participant: dict[str, Any]
    language: str | None
    offered_media: list[dict[str, Any]]
    media: MediaFormat | None
    selected_offer: dict[str, Any] | None
    is_probe: bool
    start_paused: bool
    custom_config: dict[str, Any] | None
    continued_sessions: list[dict[str, Any]]
    open_received_at: float


@dataclass(slots=True)
class AudioFrame:
    """A received audio frame; `sample_offset` is the stream position (samples) at its start.
    Treat it as immutable: it is not frozen only so that its `__init__` can be written out."""

    data: bytes = field(repr=False)  # never printed: audio must not reach logs
    sample_offset: int
    sample_count: int

    def __init__(self, data: bytes, sample_offset: int, sample_count: int) -> None:
        # One is made per frame. The __init__ the dataclass decorator writes stays interpreted
        # bytecode in the compiled build (and a frozen one sets each field through
        # object.__setattr__); this one is compiled with the module.
        self.data = data
        self.sample_offset = sample_offset
        self.sample_count = sample_count


@dataclass(frozen=True, slots=True)
class Paused:
    position_samples: int


@dataclass(frozen=True, slots=True)
class Resumed:
    start_samples: int
    discarded_samples: int


@dataclass(frozen=True, slots=True)
class Discarded:
    start_samples: int
    discarded_samples: int


@dataclass(frozen=True, slots=True)
class LanguageUpdated:
    language: str


@dataclass(frozen=True, slots=True)
class CloseRequested:
    """The client sent `close` and the close window opened: `closed` waits for the consumer's
    `finish` or the window's end; events may still be sent (docs/protocol.md §4.6)."""

    reason: str
    position_samples: int


CloseWindowOutcome: TypeAlias = Literal["finished", "expired", "drained", "dropped"]


@dataclass(frozen=True, slots=True)
class CloseWindowEnded:
    """The close window ended (`closed` sent, unless the socket went: `dropped`)."""

    outcome: CloseWindowOutcome
    seconds: float


@dataclass(frozen=True, slots=True)
class ClientError:
    code: int
    message: str
    retry_after_seconds: float | None


@dataclass(frozen=True, slots=True)
class PingReceived:
    rtt_seconds: float | None


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    kind: ViolationKind
    info: str


@dataclass(frozen=True, slots=True)
class DisconnectSent:
    """A `disconnect` was sent. `cause` is for logs and metrics only: the client saw `info`."""

    reason: DisconnectReason
    info: str | None
    cause: str | None = None


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session ended; `reason` is the client's close reason, None if the socket just went."""

    reason: str | None
    frames: int
    bytes: int
    samples: int
    # Frames that arrived after the session was ended (still in flight when we sent
    # `disconnect`, or sent after `close`): not published, counted here rather than reported
    # one protocol violation each.
    frames_dropped: int = 0


Output: TypeAlias = (
    SendText
    | CloseConnection
    | SessionOpened
    | AudioFrame
    | Paused
    | Resumed
    | Discarded
    | LanguageUpdated
    | CloseRequested
    | CloseWindowEnded
    | ClientError
    | PingReceived
    | ProtocolViolation
    | DisconnectSent
    | SessionClosed
)

# A client that was told to go (or was never trusted) gets this many more messages parsed,
# enough for in-flight audio and its `close`; one more and the socket is closed at once, so
# nothing it keeps sending costs more than counting.
MAX_MESSAGES_AFTER_END: Final = 64

# The reference client gives up 10 s after its `close` (docs/protocol.md §7): a close window
# must end, and `closed` reach it, before that.
MAX_CLOSE_WINDOW: Final = 9.0


# --- configuration -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionConfig:
    media_policy: MediaPolicy = field(default_factory=MediaPolicy)
    start_paused: bool = False
    supported_languages: tuple[str, ...] = ()
    open_timeout: float = 10.0  # seconds from connect to `open`
    idle_timeout: float = 30.0  # no text or binary frame for this long -> disconnect error
    close_timeout: float = 10.0  # after `closed` or a server `disconnect`, then CloseConnection
    # Longest wait between the client's `close` and `closed` for a consumer's `finish`, so
    # that final transcripts reach the client; 0 answers `close` at once (Monitor).
    close_window: float = 0.0
    max_frame_bytes: int = 65536
    allowed_organizations: frozenset[str] | None = None  # None = any org
    # Rate bounds, well above what a real-time client sends; 0 turns a bound off. Audio may
    # run ahead of the wall clock by `audio_burst_seconds`, then at `max_audio_speed` times
    # real time; messages of any kind by `message_burst`, then `max_messages_per_second`.
    max_audio_speed: float = 4.0
    audio_burst_seconds: float = 20.0
    max_messages_per_second: float = 100.0
    message_burst: int = 250

    def __post_init__(self) -> None:
        for name in ("open_timeout", "idle_timeout", "close_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be > 0")
        for name in (
            "max_audio_speed",
            "audio_burst_seconds",
            "max_messages_per_second",
            "close_window",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.close_window > MAX_CLOSE_WINDOW:
            raise ValueError(f"close_window must be <= {MAX_CLOSE_WINDOW}")
        if self.allowed_organizations is not None:
            # UUIDs compare case-insensitively.
            lowered = frozenset(org.lower() for org in self.allowed_organizations)
            object.__setattr__(self, "allowed_organizations", lowered)


# --- session -----------------------------------------------------------------------------

_S = SessionState
# States in which a violation is answered with `disconnect`; elsewhere it is only reported.
_CAN_DISCONNECT: Final = frozenset({_S.PREPARING, _S.OPENING, _S.ACTIVE, _S.PAUSED})
_STREAMING: Final = frozenset({_S.ACTIVE, _S.PAUSED})
_BEFORE_OPEN: Final = frozenset({_S.PREPARING, _S.OPENING})
_EVENT_STATES: Final = frozenset({_S.ACTIVE, _S.PAUSED, _S.CLOSING})
_GONE: Final = frozenset({_S.FINALIZING, _S.DISCONNECTED})
# The server has ended the session (or `closed` it): messages are only counted, within a budget.
_ENDED: Final = frozenset({_S.SIGNALED_ERROR, _S.UNAUTHORIZED, _S.DISCONNECTING, _S.CLOSED})
_DISCONNECT_STATE: Final[dict[str, SessionState]] = {
    "completed": _S.DISCONNECTING,
    "unauthorized": _S.UNAUTHORIZED,
    "error": _S.SIGNALED_ERROR,
}
_DISCONNECT_CLOSE_CODE: Final[dict[str, int]] = {
    "completed": CLOSE_NORMAL,
    "unauthorized": CLOSE_POLICY_VIOLATION,
    "error": CLOSE_SERVER_ERROR,
}


class ServerSession:
    """One AudioHook session on one WebSocket, seen from the server."""

    def __init__(
        self,
        session_id: str,
        config: SessionConfig,
        now: float,
        *,
        organization_header: str | None,
        authenticated: bool | None = True,
        unauthorized_at: float | None = None,
    ) -> None:
        """`authenticated=None` leaves verification pending (see complete_authentication).
        `unauthorized_at`: verification already failed; the session answers `disconnect`
        unauthorized when tick() reaches that time, and until then only counts what it gets."""
        if not is_uuid(session_id):
            raise ValueError("session_id must be a UUID")
        if authenticated is False:
            raise ValueError("authenticated=False is not supported; use unauthorized_at")
        if unauthorized_at is not None:
            authenticated = False
        self._session_id = session_id
        self._config = config
        self._policy = config.media_policy
        self._max_frame_bytes = config.max_frame_bytes
        self._org_header = organization_header
        self._authenticated: bool | None = authenticated
        self._state = SessionState.PREPARING
        self._connected_at = now
        self._last_received_at = now
        self._close_deadline: float | None = None
        self._close_code = CLOSE_NORMAL
        self._close_window_deadline: float | None = None  # set while the close window is open
        self._close_window_opened_at = 0.0
        self._close_reason = ""
        self._socket_closing = False  # CloseConnection emitted
        self._session_closed_emitted = False
        self._server_seq = 0
        self._client_seq = 0
        self._start_paused = config.start_paused
        self._pending_open: tuple[OpenParameters, float] | None = None
        self._is_probe = False
        self._language: str | None = None
        self._reconnect_requested = False
        self._media: MediaFormat | None = None
        self._group_bytes = 0  # bytes per sample group of the selected media
        self._audio_ok = False  # fast-path flag for receive_bytes
        self._position = 0  # samples: received + discarded spans
        self._client_position = 0  # last `position` the client reported, in samples
        self._frames = 0
        self._frames_dropped = 0
        self._bytes = 0
        self._unauthorized_at = unauthorized_at
        self._messages_after_end = 0
        # Rate bounds, as running totals against allowances that grow with time since connect.
        self._samples_received = 0
        self._messages = 0
        self._sample_rate_bound = config.max_audio_speed * SAMPLE_RATE
        self._sample_burst = int(config.audio_burst_seconds * SAMPLE_RATE)
        self._message_rate_bound = config.max_messages_per_second
        self._message_burst = config.message_burst

    # --- read-only properties ------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def selected_media(self) -> MediaFormat | None:
        return self._media

    @property
    def is_probe(self) -> bool:
        return self._is_probe

    @property
    def language(self) -> str | None:
        return self._language

    @property
    def position_samples(self) -> int:
        return self._position

    @property
    def client_position_samples(self) -> int:
        return self._client_position

    @property
    def frames_received(self) -> int:
        return self._frames

    @property
    def bytes_received(self) -> int:
        return self._bytes

    @property
    def messages_after_end(self) -> int:
        """Messages received before a pending `unauthorized` or after the session ended."""
        return self._messages_after_end

    @property
    def server_seq(self) -> int:
        return self._server_seq

    @property
    def client_seq(self) -> int:
        return self._client_seq

    @property
    def reconnect_requested(self) -> bool:
        return self._reconnect_requested

    @property
    def is_finished(self) -> bool:
        """True once nothing more can be sent or received."""
        return self._socket_closing or self._state in _GONE

    @property
    def next_deadline(self) -> float | None:
        """The earliest `now` at which tick() would do something."""
        if self.is_finished:
            return None
        if self._close_deadline is not None:
            return self._close_deadline
        if self._close_window_deadline is not None:
            return self._close_window_deadline
        if self._unauthorized_at is not None:
            return self._unauthorized_at
        # Sets of states, not `_S.X` (a lookup on the enum class, in compiled code too): every
        # live session is asked this several times a second.
        if self._state in _STREAMING:
            return self._last_received_at + self._config.idle_timeout
        if self._state in _BEFORE_OPEN:
            return self._connected_at + self._config.open_timeout
        return None

    # --- inputs from the socket ----------------------------------------------------------

    def receive_bytes(self, data: bytes, now: float) -> list[Output]:
        self._last_received_at = now
        self._messages += 1
        if self._audio_ok:
            size = len(data)
            if size <= self._max_frame_bytes and size % self._group_bytes == 0:
                count = size // self._group_bytes
                self._samples_received += count
                broken = self._rate_bound_broken(now)
                if broken is None:
                    offset = self._position
                    self._position = offset + count
                    self._frames += 1
                    self._bytes += size
                    return [AudioFrame(data, offset, count)]
                self._frames_dropped += 1
                return self._rate_exceeded(broken, now)
        return self._reject_audio(len(data), now)

    def _rate_bound_broken(self, now: float) -> str | None:
        """The `info` of the rate bound the client is past, if any."""
        elapsed = now - self._connected_at
        if self._sample_rate_bound and (
            self._samples_received > self._sample_burst + elapsed * self._sample_rate_bound
        ):
            return "Client Error: Audio sent faster than real time"
        if self._message_rate_bound and (
            self._messages > self._message_burst + elapsed * self._message_rate_bound
        ):
            return "Client Error: Too many messages"
        return None

    def _rate_exceeded(self, info: str, now: float) -> list[Output]:
        if self._state not in _CAN_DISCONNECT:
            return self._count_after_end()
        return self._violation("rate_exceeded", info, now)

    def _count_after_end(self) -> list[Output]:
        """Count a message from a client that was told to go (or was never trusted); past the
        budget, drop the connection."""
        self._messages_after_end += 1
        if self._messages_after_end <= MAX_MESSAGES_AFTER_END:
            return []
        self._socket_closing = True
        self._audio_ok = False
        self._unauthorized_at = None
        out: list[Output] = [
            CloseConnection(
                CLOSE_POLICY_VIOLATION, "too many messages after the session ended", abort=True
            )
        ]
        out += self._session_closed(None)
        return out

    def _reject_audio(self, size: int, now: float) -> list[Output]:
        if self.is_finished:
            return []
        if self._unauthorized_at is not None:
            return self._count_after_end()
        if not self._audio_ok:
            if self._state not in _CAN_DISCONNECT:
                self._frames_dropped += 1  # in flight after the session was ended
                return self._count_after_end()
            if self._media is None and self._state is _S.ACTIVE:
                info = "Client Error: Received audio but no media was selected"
            else:
                info = f"Client Error: Received audio in state {self._state}"
            return self._violation("audio_not_allowed", info, now)
        if size > self._max_frame_bytes:
            return self._violation("frame_too_large", "Client Error: Audio frame too large", now)
        return self._violation(
            "bad_frame_size", "Client Error: Audio frame is not a whole number of samples", now
        )

    def receive_text(self, text: str, now: float) -> list[Output]:
        if self.is_finished:
            return []
        self._last_received_at = now
        self._messages += 1
        if self._unauthorized_at is not None:
            # Verification failed: nothing is parsed. A well-behaved client numbers its text
            # messages 1, 2, ..., so counting them keeps `clientseq` right for the answer.
            self._client_seq += 1
            return self._count_after_end()
        if self._state in _ENDED:
            # Still parsed (within the budget) for the `close` the client owes us, never
            # reported: a client told to go cannot make the server log or publish anything.
            return self._count_after_end() or self._receive_after_end(text, now)
        broken = self._rate_bound_broken(now)
        if broken is not None:
            return self._rate_exceeded(broken, now)
        try:
            envelope = parse_envelope(text)
        except ProtocolError as exc:
            return self._violation(exc.kind, exc.info, now)

        failure = self._check_sequence_and_id(envelope)
        out: list[Output] = []
        if failure is not None:
            out += self._violation(failure.kind, failure.info, now)
        try:
            parameters = parse_parameters(envelope.type, envelope.parameters)
        except ProtocolError as exc:
            if failure is None:
                out += self._violation(exc.kind, exc.info, now)
            return out
        # After a seq/serverseq/id failure the error is already signalled; of that message only
        # a `close` is still acted on, so that the client gets its `closed`.
        if failure is None or isinstance(parameters, CloseParameters):
            out += self._dispatch(parameters, now)
        return out

    def _receive_after_end(self, text: str, now: float) -> list[Output]:
        try:
            envelope = parse_envelope(text)
            self._check_sequence_and_id(envelope)
            parameters = parse_parameters(envelope.type, envelope.parameters)
        except ProtocolError:
            return []
        return self._dispatch(parameters, now)

    def _check_sequence_and_id(self, envelope: ClientEnvelope) -> ProtocolError | None:
        failure: ProtocolError | None = None
        if envelope.seq != self._client_seq + 1:
            failure = ProtocolError("bad_seq", "Client Error: Invalid seq")
        # Resynchronised even on a bad seq (the reference does not), so later messages work.
        self._client_seq = envelope.seq
        self._client_position = envelope.position
        if failure is None and envelope.serverseq > self._server_seq:
            failure = ProtocolError("bad_serverseq", "Client Error: Invalid serverseq")
        if envelope.id != self._session_id:
            if self._session_id == NULL_UUID:
                self._session_id = envelope.id  # a null session id adopts the client's id
            elif failure is None:
                failure = ProtocolError("id_mismatch", "Client Error: Session identifier mismatch")
        return failure

    @property
    def _trusted(self) -> bool:
        """The upgrade was authenticated and the session was not refused since."""
        return self._authenticated is True and self._state is not _S.UNAUTHORIZED

    def _dispatch(self, parameters: ClientParameters, now: float) -> list[Output]:
        state = self._state
        if state is _S.CLOSED:
            return []  # nothing is ever sent after `closed`
        match parameters:
            case OpenParameters():
                return self._on_open(parameters, now) if state is _S.PREPARING else []
            case CloseParameters():
                return self._on_close(parameters.reason, now)
            case PingParameters():
                rtt = parameters.rtt_samples
                return [
                    self._send("pong", {}),
                    PingReceived(None if rtt is None else rtt / SAMPLE_RATE),
                ]
            case PausedParameters():
                if state is not _S.ACTIVE:
                    return []
                self._set_state(_S.PAUSED)
                return [Paused(self._position)]
            case ResumedParameters():
                if state is not _S.PAUSED:
                    return []
                self._position += parameters.discarded_samples
                self._set_state(_S.ACTIVE)
                return [Resumed(parameters.start_samples, parameters.discarded_samples)]
            case UpdateParameters():
                if state not in _STREAMING:
                    return []
                self._language = parameters.language
                return [self._send("updated", {}), LanguageUpdated(parameters.language)]
            case DiscardedParameters():
                if not self._trusted:
                    return []
                self._position += parameters.discarded_samples
                return [Discarded(parameters.start_samples, parameters.discarded_samples)]
            case ErrorParameters():
                if not self._trusted:
                    return []  # an unauthenticated client gets no say in metrics or logs
                retry = parameters.retry_after_samples
                return [
                    ClientError(
                        parameters.code,
                        parameters.message,
                        None if retry is None else retry / SAMPLE_RATE,
                    )
                ]
        raise AssertionError(f"unhandled parameters {parameters!r}")  # pragma: no cover

    def _on_open(self, parameters: OpenParameters, now: float) -> list[Output]:
        self._set_state(_S.OPENING)
        self._is_probe = parameters.conversation_id == NULL_UUID
        self._language = parameters.language
        header = self._org_header
        organization = parameters.organization_id.lower()
        # The client only learns "Unauthorized"; the cause goes to logs and metrics.
        if not header or header.strip().lower() != organization:
            return self._disconnect("unauthorized", UNAUTHORIZED_INFO, now, "org_mismatch")
        allowed = self._config.allowed_organizations
        if allowed is not None and organization not in allowed:
            return self._disconnect("unauthorized", UNAUTHORIZED_INFO, now, "org_not_allowed")
        if self._authenticated is None:
            self._pending_open = (parameters, now)  # `opened` waits for complete_authentication
            return []
        return self._finish_open(parameters, now, now)

    def _finish_open(
        self, parameters: OpenParameters, received_at: float, now: float
    ) -> list[Output]:
        selected_offer: dict[str, Any] | None = None
        if parameters.media:
            selection = self._policy.select(parameters.media)
            if selection is None:
                return self._disconnect("error", "no supported media", now)
            selected_offer, self._media = selection
            self._group_bytes = self._media.bytes_per_sample_group
        languages = (
            list(self._config.supported_languages) if parameters.supported_languages else None
        )
        opened = self._send(
            "opened", opened_parameters(selected_offer, self._start_paused, languages)
        )
        self._set_state(_S.ACTIVE)
        return [
            opened,
            SessionOpened(
                session_id=self._session_id,
                organization_id=parameters.organization_id,
                conversation_id=parameters.conversation_id,
                participant=parameters.participant,
                language=parameters.language,
                offered_media=parameters.media,
                media=self._media,
                selected_offer=selected_offer,
                is_probe=self._is_probe,
                start_paused=self._start_paused,
                custom_config=parameters.custom_config,
                continued_sessions=parameters.continued_sessions,
                open_received_at=received_at,
            ),
        ]

    def _on_close(self, reason: str, now: float) -> list[Output]:
        if self._state is _S.CLOSING:
            return []
        if self._config.close_window > 0 and self._state in _STREAMING:
            return self._open_close_window(reason, now)
        self._set_state(_S.CLOSING)
        return self._answer_close(reason, now)

    def _answer_close(self, reason: str, now: float) -> list[Output]:
        self._pending_open = None  # no `opened` after a `close`
        closed = self._send("closed", {})
        self._set_state(_S.CLOSED)
        self._close_deadline = now + self._config.close_timeout
        self._close_code = CLOSE_NORMAL
        out: list[Output] = [closed]
        out += self._session_closed(reason)
        return out

    # --- time and connection -------------------------------------------------------------

    def tick(self, now: float) -> list[Output]:
        deadline = self.next_deadline
        if deadline is None or now < deadline:
            return []
        if self._close_deadline is not None:
            self._socket_closing = True
            self._audio_ok = False
            reason = "session closed" if self._state is _S.CLOSED else "close timeout"
            out: list[Output] = [CloseConnection(self._close_code, reason)]
            out += self._session_closed(None)
            return out
        if self._close_window_deadline is not None:
            return self._end_close_window("expired", now)
        if self._unauthorized_at is not None:
            self._unauthorized_at = None
            return self._disconnect("unauthorized", UNAUTHORIZED_INFO, now)
        if self._state in _STREAMING:
            return self._disconnect("error", "idle timeout", now, "idle_timeout")
        return self._disconnect("error", "open timeout", now, "open_timeout")

    def connection_lost(self, now: float) -> list[Output]:
        if self._state in _GONE:
            return []
        self._pending_open = None
        self._close_deadline = None
        self._unauthorized_at = None
        out: list[Output] = []
        reason: str | None = None
        if self._close_window_deadline is not None:  # the client closed, then left
            reason = self._close_reason
            out.append(self._close_window_ended("dropped", now))
        # The open transaction settles when authentication completes (then DISCONNECTED).
        self._set_state(_S.FINALIZING if self._authenticated is None else _S.DISCONNECTED)
        out += self._session_closed(reason)
        return out

    def complete_authentication(
        self, ok: bool, now: float, info: str = UNAUTHORIZED_INFO
    ) -> list[Output]:
        if self._authenticated is not None:
            return []  # already decided
        self._authenticated = ok
        if self._state is _S.FINALIZING:
            self._set_state(_S.DISCONNECTED)
            return []
        if self.is_finished:
            return []
        pending, self._pending_open = self._pending_open, None
        if not ok:
            if self._state in (_S.PREPARING, _S.OPENING):
                return self._disconnect("unauthorized", info, now)
            return []
        if pending is not None and self._state is _S.OPENING:
            return self._finish_open(pending[0], pending[1], now)
        return []

    # --- server-initiated actions --------------------------------------------------------

    def pause(self, now: float) -> list[Output]:
        return self._pause_or_resume("pause", now)

    def resume(self, now: float) -> list[Output]:
        return self._pause_or_resume("resume", now)

    def _pause_or_resume(self, msg_type: Literal["pause", "resume"], now: float) -> list[Output]:
        if self._state in (_S.PREPARING, _S.OPENING):
            self._start_paused = msg_type == "pause"  # applied when `opened` is sent
            return []
        self._require(_STREAMING, msg_type)
        return [self._send(msg_type, {})]

    def disconnect(
        self,
        reason: Literal["completed", "unauthorized", "error"],
        info: str | None,
        now: float,
    ) -> list[Output]:
        self._require(_CAN_DISCONNECT, "disconnect")
        return self._disconnect(reason, info, now)

    def reconnect(self, info: str | None, now: float) -> list[Output]:
        # The session keeps streaming until the client closes; audio in flight is kept.
        self._require(_STREAMING, "reconnect")
        self._reconnect_requested = True
        return [self._send("reconnect", reconnect_parameters(info))]

    def send_event(self, entities: list[dict[str, Any]], now: float) -> list[Output]:
        self._require(_EVENT_STATES, "event")
        return [self._send("event", event_parameters(entities))]

    # --- the close window (docs/protocol.md §4.6) ------------------------------------------

    @property
    def in_close_window(self) -> bool:
        return self._close_window_deadline is not None and not self.is_finished

    def finish(self, now: float, outcome: CloseWindowOutcome = "finished") -> list[Output]:
        """The consumer is done (its final transcripts sent), or the replica is draining
        (`outcome="drained"`): end the close window with `closed`."""
        if not self.in_close_window:
            raise InvalidStateError(f"cannot finish in state {self._state}: no close window")
        return self._end_close_window(outcome, now)

    def _open_close_window(self, reason: str, now: float) -> list[Output]:
        # CLOSING: audio is refused (counted, not answered), `event` may still be sent, and
        # `closed` waits; the deadline bounds the wait whatever the consumer does.
        self._set_state(_S.CLOSING)
        self._close_reason = reason
        self._close_window_opened_at = now
        self._close_window_deadline = now + self._config.close_window
        return [CloseRequested(reason, self._position)]

    def _end_close_window(self, outcome: CloseWindowOutcome, now: float) -> list[Output]:
        ended = self._close_window_ended(outcome, now)
        return [ended, *self._answer_close(self._close_reason, now)]

    def _close_window_ended(self, outcome: CloseWindowOutcome, now: float) -> CloseWindowEnded:
        self._close_window_deadline = None
        return CloseWindowEnded(outcome, max(0.0, now - self._close_window_opened_at))

    # --- helpers -------------------------------------------------------------------------

    def _require(self, states: frozenset[SessionState], action: str) -> None:
        if self._state not in states or self.is_finished:
            raise InvalidStateError(f"cannot send {action} in state {self._state}")

    def _set_state(self, state: SessionState) -> None:
        self._state = state
        self._audio_ok = (
            not self._socket_closing
            and self._media is not None
            and (state is _S.ACTIVE or state is _S.DISCONNECTING)
        )

    def _send(self, msg_type: ServerMessageType, parameters: dict[str, Any]) -> SendText:
        # Serialise before taking the seq, so a failure leaves no gap.
        text = encode_server_message(
            msg_type, self._session_id, self._server_seq + 1, self._client_seq, parameters
        )
        self._server_seq += 1
        return SendText(text, msg_type)

    def _disconnect(
        self, reason: DisconnectReason, info: str | None, now: float, cause: str | None = None
    ) -> list[Output]:
        message = self._send("disconnect", disconnect_parameters(reason, info))
        self._pending_open = None
        self._set_state(_DISCONNECT_STATE[reason])
        self._close_deadline = now + self._config.close_timeout
        self._close_code = _DISCONNECT_CLOSE_CODE[reason]
        return [message, DisconnectSent(reason, info, cause)]

    def _violation(self, kind: ViolationKind, info: str, now: float) -> list[Output]:
        report = ProtocolViolation(kind, info)
        if self._state not in _CAN_DISCONNECT:
            return [report]  # already disconnected or closed: only reported
        out: list[Output] = [report, *self._disconnect("error", info, now)]
        self._close_code = CLOSE_PROTOCOL_ERROR
        return out

    def _session_closed(self, reason: str | None) -> list[Output]:
        if self._session_closed_emitted:
            return []
        self._session_closed_emitted = True
        return [
            SessionClosed(reason, self._frames, self._bytes, self._position, self._frames_dropped)
        ]
