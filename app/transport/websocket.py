"""The AudioHook WebSocket endpoint: the one place where socket, session and publisher meet.

One audio frame's path: ``_receive_loop`` reads it from the socket, ``ServerSession`` validates
it and returns an ``AudioFrame``, ``_dispatch`` hands it to the session's publisher queue
(never awaiting Redis). Every server message goes through one ordered outgoing queue drained
by ``_send_loop``, so ``seq`` never skips or reorders even when a consumer command and the
receive loop produce messages at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from app.protocol.session import (
    AudioFrame,
    ClientError,
    CloseConnection,
    DisconnectSent,
    InvalidStateError,
    Output,
    SendText,
    ServerSession,
    SessionClosed,
    SessionOpened,
)
from app.transport.admission import Admission, admit
from app.transport.session_observer import SessionObserver

if TYPE_CHECKING:
    from app.runtime import Gateway
    from app.streams.control import ControlCommand

log = logging.getLogger("app.transport.websocket")

# uvicorn closes the socket with this code when a message exceeds its ws_max_size.
CLOSE_MESSAGE_TOO_BIG = 1009


async def audiohook_endpoint(websocket: WebSocket) -> None:
    gateway: Gateway = websocket.app.state.gateway
    connected_at = time.monotonic()
    admission = await admit(websocket, gateway, connected_at)
    if admission is None:
        return  # refused before the upgrade; admit() answered and counted it
    try:
        await websocket.accept()
        connection = Connection(websocket, gateway, admission, connected_at)
        await connection.run()
    finally:
        gateway.release_session(admission.integration)


class Connection:
    """One live AudioHook session on this replica."""

    def __init__(
        self,
        websocket: WebSocket,
        gateway: Gateway,
        admission: Admission,
        connected_at: float,
    ) -> None:
        self.websocket = websocket
        self.gateway = gateway
        self.session_id: str = admission.session_id
        self.connected_at = connected_at
        self.session = ServerSession(
            admission.session_id,
            gateway.session_config_for(admission.integration),
            connected_at,
            organization_header=admission.organization_id,
            authenticated=True if admission.authenticated else None,
        )
        self.observer = SessionObserver(gateway, admission, self)
        self._outgoing: deque[str] = deque()
        self._outgoing_bytes = 0
        self._outgoing_ready = asyncio.Event()
        self._close_code: int | None = None
        self._close_reason = ""
        self._send_not_before = 0.0
        self._auth_failure_info = admission.failure_info

    # --- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        self.gateway.connection_started(self)
        sender = asyncio.create_task(self._send_loop(), name=f"send-{self.session_id}")
        if self._auth_failure_info is not None:
            # Verification failed: answer no sooner than the minimum failure delay.
            delay = self.gateway.settings.auth_min_failure_delay_seconds
            asyncio.get_running_loop().call_at(self.connected_at + delay, self._reject_unauthorized)
        try:
            await self._receive_loop()
        except Exception:
            log.exception("session receive loop failed", extra=self.observer.log_fields)
        finally:
            # Idempotent: reports the session closed if the client never sent `close`.
            self._dispatch(self.session.connection_lost(time.monotonic()))
            self._close_code = self._close_code or 1000
            self._outgoing_ready.set()
            try:
                await asyncio.wait_for(sender, self.gateway.settings.close_timeout_seconds)
            except TimeoutError:
                log.warning("socket did not drain; abandoning it", extra=self.observer.log_fields)
            self.gateway.connection_finished(self)
            await self.observer.finished()

    def _reject_unauthorized(self) -> None:
        info = self._auth_failure_info or "Unauthorized"
        self._dispatch(self.session.complete_authentication(False, time.monotonic(), info))

    async def _receive_loop(self) -> None:
        receive = self.websocket.receive
        session = self.session
        while True:
            message = await receive()
            now = time.monotonic()
            if message["type"] == "websocket.disconnect":
                if message.get("code") == CLOSE_MESSAGE_TOO_BIG:
                    self.observer.oversized_message()
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
        """Apply a session's outputs in order. Never awaits: ordering is decided here."""
        for output in outputs:
            if type(output) is AudioFrame:
                self.observer.audio(output)
            elif type(output) is SendText:
                self._enqueue(output.text)
            elif type(output) is CloseConnection:
                self._close_code = output.code
                self._close_reason = output.reason
                self._outgoing_ready.set()
            elif type(output) is DisconnectSent and output.reason == "unauthorized":
                # Every authentication failure is answered no sooner than the minimum delay.
                delay = self.gateway.settings.auth_min_failure_delay_seconds
                self._send_not_before = self.connected_at + delay
                self.observer.unauthorized(output)
            elif type(output) is ClientError and output.code == 429:
                self.observer.client_rate_limit(output.retry_after_seconds)
                self.observer.event(output)
            elif type(output) is SessionOpened:
                self.observer.opened(output, time.monotonic())
            elif type(output) is SessionClosed:
                self.observer.closed(output)
            else:
                self.observer.event(output)

    def _enqueue(self, text: str) -> None:
        if self._close_overflowed():
            return  # the client stopped reading and is being dropped
        self._outgoing.append(text)
        self._outgoing_bytes += len(text)
        self._outgoing_ready.set()
        if self._outgoing_bytes > self.gateway.settings.max_outgoing_queue_bytes:
            # The client stopped reading: drop it rather than buffer without bound.
            self.observer.outgoing_overflow()
            self._outgoing.clear()
            self._outgoing_bytes = 0
            self._close_code = 1008
            self._close_reason = "client not reading"
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

    async def _send_loop(self) -> None:
        websocket = self.websocket
        try:
            while True:
                await self._outgoing_ready.wait()
                self._outgoing_ready.clear()
                wait = self._send_not_before - time.monotonic()
                if wait > 0 and self._outgoing:
                    await asyncio.sleep(wait)
                while self._outgoing and not self._close_overflowed():
                    text = self._outgoing.popleft()
                    self._outgoing_bytes -= len(text)
                    await websocket.send_text(text)
                if self._close_code is not None:
                    await self._close_socket()
                    return
        except Exception as exc:  # the socket went away while we were writing
            log.debug("send loop ended: %s", exc, extra=self.observer.log_fields)

    def _close_overflowed(self) -> bool:
        return self._close_code == 1008

    async def _close_socket(self) -> None:
        if self.websocket.client_state.name == "CONNECTED":
            try:
                await self.websocket.close(self._close_code or 1000, self._close_reason)
            except Exception as exc:
                log.debug("close failed: %s", exc, extra=self.observer.log_fields)

    # --- timers and consumer commands (called from the gateway's tasks) --------------------
    def tick(self, now: float) -> None:
        deadline = self.session.next_deadline
        if deadline is not None and deadline <= now:
            self._dispatch(self.session.tick(now))

    def end_with_error(self, info: str) -> None:
        """The publisher cannot keep up: tell the client, as the promise of no silent loss says."""
        with contextlib.suppress(InvalidStateError):
            self._dispatch(self.session.disconnect("error", info, time.monotonic()))

    def drain(self, action: str) -> None:
        now = time.monotonic()
        with contextlib.suppress(InvalidStateError):
            if action == "reconnect":
                self._dispatch(self.session.reconnect("server shutting down", now))
            else:
                self._dispatch(self.session.disconnect("completed", "server shutting down", now))

    @property
    def log_fields(self) -> dict[str, object]:
        """The session's ids, for log lines written about it elsewhere (consumer commands)."""
        return self.observer.log_fields

    def apply(self, command: ControlCommand) -> str:
        return self.observer.apply_command(command, self._dispatch)
