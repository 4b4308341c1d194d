"""One live AudioHook session on this replica: where socket, session and publisher meet.

One audio frame's path: the WebSocket protocol, switched to direct mode once the session is
accepted (app/transport/ws_protocol.py), parses it in the read callback and calls
``message_received``; ``ServerSession`` validates it and returns an ``AudioFrame``, which goes
to the session's publisher queue (never awaiting Redis). All of it runs synchronously in the
read callback: no task wakes up per frame. A server message is written at once when nothing
waits before it (and the socket takes it); otherwise it joins one ordered outgoing queue
drained by ``_send_loop`` (a task that runs only while messages wait), so ``seq`` never skips
or reorders even when a consumer command and a received message produce messages at the same
time.

Compiled with the other per-frame modules (pyproject.toml, compiled-modules): the endpoint
that Starlette calls stays in app/transport/websocket.py, since Starlette tells an endpoint
function from an ASGI app by inspecting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketState

from app.protocol.session import (
    AudioFrame,
    ClientError,
    CloseConnection,
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
    SendText,
    ServerSession,
    SessionClosed,
    SessionOpened,
)
from app.transport.admission import Admission
from app.transport.frames import CLOSE_MESSAGE_TOO_BIG
from app.transport.session_reporter import SessionReporter
from app.transport.ws_protocol import AudioHookWebSocketProtocol

if TYPE_CHECKING:
    from app.control.plane import ControlCommand
    from app.transport.host import ConnectionHost

log = logging.getLogger("app.transport.connection")


async def wait_until(not_before: float) -> None:
    """Return no sooner than `not_before` (on time.monotonic). The one way an answer to a failed
    login is held for the minimum failure delay: the HTTP 401 before it is sent, and the
    connection's outgoing messages once the session has said `unauthorized`. The time itself
    is set once, by admission (`Admission.failure_not_before`, `Refusal.not_before`)."""
    delay = not_before - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class Connection:
    """One live AudioHook session on this replica."""

    __slots__ = (
        "_close_code",
        "_close_reason",
        "_done",
        "_dropped",
        "_failure_not_before",
        "_outgoing",
        "_outgoing_bytes",
        "_protocol",
        "_send_not_before",
        "_sender",
        "_sending_over",
        "gateway",
        "reporter",
        "session",
        "session_id",
        "websocket",
    )

    def __init__(
        self,
        websocket: WebSocket,
        gateway: ConnectionHost,
        admission: Admission,
        connected_at: float,
    ) -> None:
        self.websocket = websocket
        self.gateway = gateway
        self.session_id: str = admission.session_id
        self._failure_not_before = admission.failure_not_before
        self.session = ServerSession(
            admission.session_id,
            gateway.session_config_for(admission.integration),
            connected_at,
            organization_header=admission.organization_id,
            # Verification failed: the session is told so (by the ticker) after the minimum
            # failure delay, and until then only counts what the client sends.
            unauthorized_at=None if admission.authenticated else admission.failure_not_before,
        )
        self.reporter = SessionReporter(gateway, admission, self)
        # (text, message type) waiting to be sent. A list, not a deque: rarely more than one
        # message waits, and an empty deque costs 600 bytes per session.
        self._outgoing: list[tuple[str, str]] = []
        self._outgoing_bytes = 0
        self._dropped = False  # the connection is being dropped (client not reading, or abusive)
        # The sender task exists only while messages wait (most of a call has none to send).
        self._sender: asyncio.Task[None] | None = None
        self._sending_over = False  # socket closed or broken: nothing more is sent
        self._close_code: int | None = None
        self._close_reason = ""
        # Nothing is sent before this: the failure time once the session said `unauthorized`.
        self._send_not_before = 0.0
        # Direct mode: set once nothing more is read for the session (socket gone or closing).
        self._done: asyncio.Future[None] | None = None
        self._protocol: AudioHookWebSocketProtocol | None = None  # in direct mode

    # --- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        self.gateway.connection_started(self)
        try:
            protocol = getattr(self.websocket._receive, "__self__", None)
            if isinstance(protocol, AudioHookWebSocketProtocol):
                self._protocol = protocol
                self._done = asyncio.get_running_loop().create_future()
                protocol.take_over(self)  # messages now arrive via message_received
                await self._done
            else:  # another ASGI server: messages one by one through ASGI `receive`
                await self._receive_loop()
        except Exception:
            log.exception("session receive loop failed", extra=self.reporter.log_fields)
        finally:
            # Idempotent: reports the session closed if the client never sent `close`.
            self._dispatch(self.session.connection_lost(time.monotonic()))
            self._close_code = self._close_code or 1000
            self._start_sender()
            close_timeout = self.gateway.settings.close_timeout_seconds
            if self._sender is not None:
                try:
                    await asyncio.wait_for(self._sender, close_timeout)
                except TimeoutError:
                    log.warning("socket did not drain; dropping it", extra=self.reporter.log_fields)
                    self._abort_socket()
            if self._protocol is not None:  # gone within the close timeout, whatever happens
                self._protocol.drop_after(close_timeout)
            self.gateway.connection_finished(self)
            try:
                await self.reporter.finished()
            finally:
                self.reporter.forget_connection()

    # --- direct mode: called by the protocol from its read callback ---------------------------
    def message_received(self, data: bytes | str) -> None:
        if self._close_code is not None:  # closing: like the receive loop, read no more
            return
        now = time.monotonic()
        try:
            if isinstance(data, bytes):
                outputs = self.session.receive_bytes(data, now)
                if len(outputs) == 1 and type(outputs[0]) is AudioFrame:
                    self.reporter.audio(outputs[0], now)  # nearly every message of a call
                else:
                    self._dispatch(outputs)
            else:
                self._dispatch(self.session.receive_text(data, now))
        except Exception:
            log.exception("session receive failed", extra=self.reporter.log_fields)
            self._close_code = self._close_code or 1011
        if self._close_code is not None:
            self._stop_receiving()

    def connection_ended(self, code: int) -> None:
        self.websocket.client_state = WebSocketState.DISCONNECTED
        if self._done is None or self._done.done():
            return
        try:
            if code == CLOSE_MESSAGE_TOO_BIG:
                self.reporter.oversized_message()
            self._dispatch(self.session.connection_lost(time.monotonic()))
        except Exception:
            log.exception("session end failed", extra=self.reporter.log_fields)
        self._stop_receiving()

    def _stop_receiving(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _receive_loop(self) -> None:
        # The server's own ASGI `receive`, not Starlette's WebSocket.receive: that wrapper only
        # re-checks message types per frame (a visible cost at 10,000 frames/s); the one state
        # change it makes, on disconnect, is made here.
        receive = self.websocket._receive
        session = self.session
        while True:
            message = await receive()
            now = time.monotonic()
            if message["type"] == "websocket.disconnect":
                self.websocket.client_state = WebSocketState.DISCONNECTED
                if message.get("code") == CLOSE_MESSAGE_TOO_BIG:
                    self.reporter.oversized_message()
                self._dispatch(session.connection_lost(now))
                return
            data = message.get("bytes")
            if data is not None:
                self._dispatch(session.receive_bytes(data, now))
            else:
                self._dispatch(session.receive_text(message.get("text") or "", now))
            if self._close_code is not None:
                return

    # --- outputs ------------------------------------------------------------------------------
    def _dispatch(self, outputs: list[Output]) -> None:
        """Apply a session's outputs in order: the one place that tells them apart (the
        reporter has a method per kind). Never awaits: ordering is decided here."""
        for output in outputs:
            if type(output) is AudioFrame:
                self.reporter.audio(output, time.monotonic())
            elif type(output) is SendText:
                self._enqueue(output.text, output.message_type)
            elif type(output) is CloseConnection:
                self._close_code = output.code
                self._close_reason = output.reason
                if output.abort:
                    self._drop_connection()
                self._start_sender()
                self._stop_receiving()  # direct mode: the session is over, `run` ends it
            elif type(output) is DisconnectSent:
                if output.reason == "unauthorized":
                    # Every authentication failure is answered no sooner than the minimum delay.
                    self._send_not_before = self._failure_not_before
                    self.reporter.unauthorized(output)
                self.reporter.disconnect_sent(output)
            elif type(output) is ClientError:
                if output.code == 429:
                    self.reporter.client_rate_limit(output.retry_after_seconds)
                self.reporter.client_error(output)
            elif type(output) is SessionOpened:
                self.reporter.opened(output)
            elif type(output) is SessionClosed:
                self.reporter.closed(output)
            elif type(output) is Paused:
                self.reporter.paused(output)
            elif type(output) is Resumed:
                self.reporter.resumed(output)
            elif type(output) is Discarded:
                self.reporter.discarded(output)
            elif type(output) is LanguageUpdated:
                self.reporter.language_updated(output)
            elif type(output) is CloseRequested:
                self.reporter.close_requested(output)
            elif type(output) is CloseWindowEnded:
                self.reporter.close_window_ended(output)
            elif type(output) is PingReceived:
                self.reporter.ping_received(output)
            elif type(output) is ProtocolViolation:
                self.reporter.protocol_violation(output)

    def _enqueue(self, text: str, message_type: str) -> None:
        if self._dropped:
            return
        if (
            self._protocol is not None
            and self._sender is None  # nothing queued or being sent: order is kept
            and not self._outgoing
            and not self._sending_over
            and message_type != "disconnect"  # may have to wait for the failure delay
            and time.monotonic() >= self._send_not_before
            and self._protocol.send_text_now(text)
        ):
            if message_type == "opened":
                self.reporter.opened_sent(time.monotonic())
            return
        self._outgoing.append((text, message_type))
        self._outgoing_bytes += len(text)
        self._start_sender()
        if self._outgoing_bytes > self.gateway.settings.max_outgoing_queue_bytes:
            # The client stopped reading: drop it rather than buffer without bound.
            self.reporter.outgoing_overflow()
            self._close_code = 1008
            self._close_reason = "client not reading"
            self._drop_connection()

    def _drop_connection(self) -> None:
        """Nothing more is sent: the TCP connection is dropped at once."""
        self._dropped = True
        self._outgoing.clear()
        self._outgoing_bytes = 0
        self._abort_socket()

    def _abort_socket(self) -> None:
        """Drop the TCP connection at once: a close frame would only queue behind the data
        the client is not reading. uvicorn gives the app its protocol's bound `receive`, whose
        owner holds the transport; under another server this does nothing and the socket is
        closed when the send loop gets through."""
        protocol = getattr(self.websocket._receive, "__self__", None)
        abort = getattr(getattr(protocol, "transport", None), "abort", None)
        if callable(abort):  # uvloop's transports are not asyncio.Transport subclasses
            abort()

    def _start_sender(self) -> None:
        """At most one sender at a time, so messages leave strictly in queue (seq) order."""
        if self._sender is not None or self._sending_over:
            return
        if (
            not self._outgoing
            and self._close_code is not None
            and self.websocket.client_state is WebSocketState.DISCONNECTED
        ):
            # Closing with nothing to send and the socket already gone (the usual end: the
            # client closed after `closed`): all a sender would do, without the task.
            self._sending_over = True
            return
        self._sender = asyncio.create_task(self._send_loop(), name=f"send-{self.session_id}")

    async def _send_loop(self) -> None:
        """Send what is queued, close the socket if asked, and end once nothing is left."""
        websocket = self.websocket
        try:
            while self._outgoing and not self._dropped:
                # Checked before every message: an unauthorized `disconnect` queued while this
                # sender was already busy must still wait for the minimum failure delay.
                if time.monotonic() < self._send_not_before:
                    await wait_until(self._send_not_before)
                    continue
                text, message_type = self._outgoing.pop(0)
                self._outgoing_bytes -= len(text)
                await websocket.send_text(text)
                if message_type == "opened":
                    self.reporter.opened_sent(time.monotonic())
            # Queue empty. Unless closing (which stops new senders first), nothing awaits from
            # here to `finally`, so any message queued later starts a new sender.
            if self._close_code is not None:
                self._sending_over = True
                await self._close_socket()
        except Exception as exc:  # the socket went away while we were writing
            self._sending_over = True
            log.debug("send loop ended: %s", exc, extra=self.reporter.log_fields)
        finally:
            self._sender = None

    async def _close_socket(self) -> None:
        if self.websocket.client_state.name == "CONNECTED":
            try:
                await self.websocket.close(self._close_code or 1000, self._close_reason)
            except Exception as exc:
                log.debug("close failed: %s", exc, extra=self.reporter.log_fields)
        self._stop_receiving()  # as the receive loop ends on the disconnect the close queues

    # --- timers and consumer commands (called from the gateway's tasks) --------------------
    def tick(self, now: float) -> None:
        deadline = self.session.next_deadline
        if deadline is not None and deadline <= now:
            self._dispatch(self.session.tick(now))

    def end_with_error(self, info: str) -> None:
        """The publisher cannot keep up: tell the client, as the promise of no silent loss says."""
        with contextlib.suppress(InvalidStateError):
            self._dispatch(self.session.disconnect("error", info, time.monotonic()))

    def fail(self, info: str) -> None:
        """Something of ours broke on this session: `disconnect` error if it can still say
        so, else the TCP connection is dropped. Never raises: the caller serves every session."""
        try:
            self.end_with_error(info)
        except Exception:
            self._drop_connection()

    def drain(self, action: str) -> None:
        now = time.monotonic()
        if self.session.in_close_window:  # the replica is going: `closed` now, not later
            self._dispatch(self.session.finish(now, outcome="drained"))
            return
        with contextlib.suppress(InvalidStateError):
            if action == "reconnect":
                self._dispatch(self.session.reconnect("server shutting down", now))
            else:
                self._dispatch(self.session.disconnect("completed", "server shutting down", now))

    @property
    def log_fields(self) -> dict[str, object]:
        """The session's ids, for log lines written about it elsewhere (consumer commands)."""
        return self.reporter.log_fields

    def apply(self, command: ControlCommand) -> str:
        """Apply a consumer's command to the session now (the control plane's target)."""
        session = self.session
        now = time.monotonic()
        name = command.command
        try:
            if name == "pause":
                self._dispatch(session.pause(now))
            elif name == "resume":
                self._dispatch(session.resume(now))
            elif name == "disconnect":
                self._dispatch(session.disconnect(command.reason, command.info, now))
            elif name == "event":
                self._dispatch(session.send_event(command.entities, now))
                self.reporter.event_message_sent()
            elif name == "finish":
                self._dispatch(session.finish(now))
            else:
                return "invalid"
        except InvalidStateError:
            return "invalid_state"
        return "applied"
