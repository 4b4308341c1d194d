"""uvicorn's sans-I/O WebSocket protocol, with a direct mode for accepted AudioHook sessions.

The handshake (admission, denial responses, `accept`) flows through ASGI as uvicorn does it.
Once the endpoint has accepted, `take_over` switches the protocol to direct mode: each TCP
read goes to ``DirectReader`` (compiled in the compiled build), every complete message of it
is parsed (``FrameParser``, both in app/transport/frames.py) and handed synchronously to the
session's ``MessageSink``, in order, with no ASGI dict, queue, future or task wake-up per frame
and no pause/resume of reading. Messages the server sends still go through ASGI `send` (rare:
a few per session), so uvicorn keeps writing them, the keepalive pings and the close.

Before the take-over (and under any other use), every complete frame of a read reaches the
application before a parser error in that read is reported: uvicorn's own protocol reports
only the error, silently dropping the good frames parsed before it.

After the server's close frame, whatever the client still sends is read (until its close
frame or the close timeout) only to be thrown away: a client that keeps flooding then costs
parsing per frame, so past `MAX_BYTES_AFTER_CLOSE` the socket is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import unquote

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import ProtocolError
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import OPEN

from app.observability.logging import CONNECTION_LOG, refusal_log
from app.observability.metrics import PROTOCOL_ERRORS
from app.transport.frames import (
    CLOSE_ABNORMAL,
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    DirectReader,
    FrameError,
    FrameParser,
)
from app.transport.handshake import accept_value, valid_header

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent, WebSocketAcceptEvent
    from uvicorn.config import Config
    from uvicorn.server import ServerState


def _ignore(data: bytes | str) -> None:
    pass


class MessageSink(Protocol):
    """What a direct-mode protocol hands an accepted session (always synchronously)."""

    def message_received(self, data: bytes | str) -> None: ...

    def connection_ended(self, code: int) -> None:
        """The peer closed (its close code), the protocol failed the connection (the code it
        sent), or the socket went (1006). Called once; no message follows it."""


# Enough for the audio a real client has in flight when our close frame reaches it.
MAX_BYTES_AFTER_CLOSE = 256 * 1024
# A conforming client sends nothing between its upgrade request and our response.
MAX_BYTES_BEFORE_RESPONSE = 64 * 1024
DATA_BEFORE_RESPONSE = "data_before_handshake_response"  # the protocol error's kind

_early_data_log = refusal_log(logging.getLogger("app.transport.ws_protocol"))


class _NoReceiveQueue:
    """Stands in for uvicorn's ASGI receive queue once messages go straight to the session:
    what uvicorn still puts there (the disconnect event) has no reader."""

    def put_nowait(self, event: object) -> None:
        pass

    def empty(self) -> bool:
        return True


_NO_RECEIVE_QUEUE = _NoReceiveQueue()


class AudioHookWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # "uvicorn.error", less the two records a call made only for its filter to drop.
        self.logger = self.conn.logger = CONNECTION_LOG

    _sink: MessageSink | None = None  # set by take_over: direct mode
    _plain_accept: bytes | None = None  # the 101's head, when start_plain took the handshake
    _parser: FrameParser | None = None
    _early_bytes = 0  # arrived after the upgrade request, before the response
    _bytes_after_close = 0
    _reaper: asyncio.TimerHandle | None = None  # drop_after's timer
    handshake_deadline: asyncio.TimerHandle | None = None  # the HTTP guard's, until we end

    def start_plain(
        self,
        transport: asyncio.Transport,
        addresses: tuple[Any, Any, Literal["ws", "wss"]],
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        key: bytes,
    ) -> None:
        """Begin a plain upgrade (app/transport/handshake.py) as uvicorn's `connection_made`
        and `handle_connect` would after websockets parsed and accepted the request, from what
        the HTTP protocol already has: `addresses` (server, client, "ws" or "wss"), the
        request target and headers. The 101 is written at the application's accept (`send`)."""
        self.connections.add(self)
        self.transport = transport
        self.server, self.client, self.scheme = addresses
        self.handshake_initiated = True
        self._plain_accept = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_value(key) + b"\r\n"
        )
        raw_path, _, query_string = target.partition(b"?")
        root_path = self.root_path
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": root_path,
            "path": root_path + unquote(raw_path.decode("ascii")),
            "raw_path": root_path.encode("ascii") + raw_path,
            "query_string": query_string,
            "headers": list(headers),
            "subprotocols": [],
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    async def send(self, message: ASGISendEvent) -> None:
        """uvicorn's, but a plain upgrade's accept writes its prepared 101 (every other message,
        a refusal included, goes uvicorn's way: websockets' protocol is still CONNECTING). An
        accept that finds its connection closing (the client gone, or dropped for early data
        while admission decided) raises ClientDisconnected, as one after the connection's end
        does: uvicorn would otherwise log the application's return as an error, and the call
        would start on a dead connection."""
        if message["type"] != "websocket.accept":
            await super().send(message)
            return
        accept = self._plain_accept
        if accept is None or self.handshake_complete:
            await super().send(message)
        else:
            await self._send_plain_accept(accept, message)
        if not self.handshake_complete:
            raise ClientDisconnected()

    async def _send_plain_accept(self, accept: bytes, message: WebSocketAcceptEvent) -> None:
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        self._plain_accept = None
        extra = list(self.default_headers) + [
            (name.lower(), value) for name, value in message.get("headers", [])
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            extra.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
        if not all(valid_header(name, value) for name, value in extra):
            raise ValueError("invalid header in websocket.accept")  # as websockets refuses it
        head = accept + b"".join(name + b": " + value + b"\r\n" for name, value in extra)
        if not self.transport.is_closing():
            self.handshake_complete = True
            # websockets' protocol, open, frames what uvicorn sends next (pings, the close) and
            # parses frames (until the take-over), its parser started afresh past the head.
            self.conn.state = OPEN
            self.conn.parser = self.conn.parse()
            next(self.conn.parser)
            self.transport.write(head + b"\r\n")
            self.start_keepalive()

    def data_received(self, data: bytes) -> None:
        """Every read until the session is taken over (and after the server's close frame:
        `DirectReader` reads in between)."""
        if self.close_sent:  # uvicorn: set once the server's close frame is written
            self._bytes_after_close += len(data)
            if self._bytes_after_close > MAX_BYTES_AFTER_CLOSE:
                self.transport.abort()
                return
        parser = self._parser
        if parser is not None:
            try:
                parser.receive(data, self.loop.time())
            except FrameError as exc:
                self.fail_connection(exc.code, exc.reason)
            return
        if self.handshake_initiated and not self.handshake_complete:
            # Section 4.1: nothing may follow the request before our response. Such bytes are
            # never parsed or queued (websockets would parse them as frames, and uvicorn fail
            # an assertion on a bad one); take_over fails the connection for them, and past a
            # bound a client still sending them while admission decides is dropped. (Bytes
            # that shared the request's read come from the HTTP guard: uvicorn drops them.)
            self._early_bytes += len(data)
            if self._early_bytes > MAX_BYTES_BEFORE_RESPONSE:
                self._drop_early()
            return
        self.conn.receive_data(data)
        self.handle_events()  # frames parsed before a parser error, if any
        if self.conn.parser_exc is not None:
            self.handle_parser_exception()

    def _drop_early(self) -> None:
        """Drop a connection whose client keeps sending before the handshake response:
        counted, logged within the refusals' rate, and aborted (admission, if still
        deciding, finds the connection gone)."""
        PROTOCOL_ERRORS.labels(DATA_BEFORE_RESPONSE).inc()
        _early_data_log.log(
            logging.WARNING,
            DATA_BEFORE_RESPONSE,
            "connection dropped: data before the handshake response",
            {"client_address": self.client[0] if self.client else None, "bytes": self._early_bytes},
        )
        self.transport.abort()

    def take_over(self, sink: MessageSink) -> None:
        """Deliver every later message of this accepted connection straight to `sink`.

        Called right after `accept`, before the event loop runs again, so nothing of the
        session can have been read yet: anything already read was sent before the handshake
        response, which section 4.1 forbids, and fails the connection."""
        self._sink = sink
        if self.disconnected or self.close_sent:
            self._end(CLOSE_ABNORMAL)
            return
        # Messages go straight to the sink; once the connection ends, nowhere (_end).
        self._parser = FrameParser(
            self.config.ws_max_size, sink.message_received, self._control, self.loop.time()
        )
        if self._early_bytes or self.conn.reader.buffer or not self.queue.empty():
            PROTOCOL_ERRORS.labels(DATA_BEFORE_RESPONSE).inc()
            self.fail_connection(CLOSE_PROTOCOL_ERROR, "data sent before the handshake response")
        else:
            # An instance attribute shadows the method. The transport keeps the bound method
            # it was given (uvloop does), so it is given the protocol again. Removed when the
            # connection is lost: the reader refers back to this protocol.
            reader = DirectReader(self, self._parser, self.loop.time)
            self.data_received = reader.data_received  # type: ignore[method-assign]
            self.transport.set_protocol(self)
        # uvicorn keeps the handshake's request and response (every header, a few KB) for the
        # life of the connection; nothing reads them again.
        self.request = self.response = None  # type: ignore[assignment]
        # Frames are ours to parse: websockets' parser, a generator that holds the handshake
        # request in its frame and is in a cycle with its protocol, is done with too.
        self.conn.parser.close()
        self.queue = _NO_RECEIVE_QUEUE  # type: ignore[assignment]  # four deques, 3 KB

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            # A client that does not read gets no pong beyond what its socket holds (section
            # 5.5.3 allows answering only the most recent ping): nothing queues without bound.
            if not self.close_sent and self.writable.is_set():
                self.transport.write(bytes((0x80 | OP_PONG, len(payload))) + payload)
        elif opcode == OP_PONG:
            self.handle_pong(Frame(Opcode.PONG, payload))  # uvicorn's keepalive
        elif self.close_sent:
            # The client's answer to our close frame: the closing handshake is complete.
            if self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = None
            self.transport.close()
        else:
            try:
                code = Close.parse(payload).code
            except UnicodeDecodeError:
                raise FrameError(CLOSE_INVALID_DATA, "invalid UTF-8 close reason") from None
            except ProtocolError as exc:
                raise FrameError(CLOSE_PROTOCOL_ERROR, str(exc)) from None
            # Section 5.5.1: answer with a close frame echoing the code, then drop the TCP
            # connection (the server closes first, section 7.1.1).
            self.transport.write(b"\x88\x02" + payload[:2] if len(payload) >= 2 else b"\x88\x00")
            self.close_sent = True
            self.transport.close()
            self._end(code)

    def send_text_now(self, text: str) -> bool:
        """Write a text message at once, unless a close was sent or the transport is closing
        or paused (the client is not reading): then False, and the caller queues it."""
        if self.close_sent or not self.writable.is_set() or self.transport.is_closing():
            return False
        payload = text.encode()
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | OP_TEXT, size))
        elif size < 65_536:
            header = b"\x81\x7e" + size.to_bytes(2)
        else:
            header = b"\x81\x7f" + size.to_bytes(8)
        self.transport.write(header + payload)
        return True

    def read_after_close(self, data: bytes) -> None:
        AudioHookWebSocketProtocol.data_received(self, data)

    def fail_connection(self, code: int, reason: str) -> None:
        """Section 7.1.7: send a close frame with `code` and drop the connection."""
        if not self.close_sent:
            self.close_sent = True
            reason_bytes = reason.encode()[:123]
            self.transport.write(
                bytes((0x80 | OP_CLOSE, 2 + len(reason_bytes))) + code.to_bytes(2) + reason_bytes
            )
        self.transport.close()
        self._end(code)

    def _end(self, code: int) -> None:
        sink = self._sink
        if sink is not None:
            self._sink = None
            if self._parser is not None:
                self._parser.on_message = _ignore
            sink.connection_ended(code)

    def drop_after(self, seconds: float) -> None:
        """Abort the TCP connection in `seconds` unless it is gone by then: whatever the close
        handshake does (a client that neither reads nor answers our close frame keeps a
        graceful close waiting on its full buffer), it ends in bounded time. The timer is
        cancelled when the connection goes, so nothing of the session is kept alive by it."""
        if self._reaper is None and not self.disconnected:
            self._reaper = self.loop.call_later(seconds, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._reaper, self.handshake_deadline):
            if timer is not None:
                timer.cancel()
        self._reaper = self.handshake_deadline = None
        super().connection_lost(exc)
        self._end(CLOSE_ABNORMAL)
        # Nothing is read after this; the parser and the reader refer back to this protocol
        # (its control frame callback, its close state), cycles that would keep the transport
        # and the upgrade's headers alive until the collector's next full pass.
        self._parser = None
        vars(self).pop("data_received", None)
