"""uvicorn's sans-I/O WebSocket protocol, with a direct mode for accepted AudioHook sessions.

The handshake (admission, denial responses, `accept`) flows through ASGI as uvicorn does it.
Once the endpoint has accepted, `take_over` switches the protocol to direct mode: every
complete message of a TCP read is parsed here (``FrameParser``) and handed synchronously to
the session's ``MessageSink``, in order, with no ASGI dict, queue, future or task wake-up per
frame and no pause/resume of reading. Messages the server sends still go through ASGI `send`
(rare: a few per session), so uvicorn keeps writing them, the keepalive pings and the close.

Before the take-over (and under any other use), every complete frame of a read reaches the
application before a parser error in that read is reported: uvicorn's own protocol reports
only the error, silently dropping the good frames parsed before it.

After the server's close frame, whatever the client still sends is read (until its close
frame or the close timeout) only to be thrown away: a client that keeps flooding then costs
parsing per frame, so past `MAX_BYTES_AFTER_CLOSE` the socket is dropped.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import ProtocolError
from websockets.frames import Close, Frame, Opcode

from app.observability.logging import CONNECTION_LOG

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets ships its C speedups for common platforms
    from websockets.utils import apply_mask

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INVALID_DATA = 1007
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_ABNORMAL = 1006  # never sent: reported when the socket went without a close frame

# Frames per second a connection may send after a burst, whatever their kind: a real client
# sends 5 to 50 audio frames a second and a few others; tiny frames (empty pings, pongs,
# continuations) cost ~200 times more CPU per byte than audio, so they are bounded here.
FRAME_RATE = 200
FRAME_BURST = 500

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

_U16 = struct.Struct("!H").unpack_from
_U64 = struct.Struct("!Q").unpack_from


class FrameError(Exception):
    """The client broke RFC 6455; the connection is failed with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameParser:
    """Client frames (RFC 6455 section 5) in, whole messages out, through callbacks.

    `feed` takes the bytes of each read; every message completed by them goes to `on_message`
    (bytes for binary, str for text) and every control frame to `on_control`, in wire order.
    A broken rule raises ``FrameError`` after the messages before it were delivered. No
    extension is negotiated, so the RSV bits must be clear.
    """

    __slots__ = (
        "_buffer",
        "_fragment_opcode",
        "_fragments",
        "_fragments_size",
        "_max_size",
        "_need",
        "_on_control",
        "frames_left",
        "on_message",
    )

    def __init__(
        self,
        max_size: int,
        on_message: Callable[[bytes | str], None],
        on_control: Callable[[int, bytes], None],
    ) -> None:
        self._max_size = max_size
        self.on_message = on_message  # replaceable: the protocol mutes it when the connection ends
        self._on_control = on_control
        self._buffer = bytearray()  # an incomplete frame carried over from earlier reads
        self._need = 0  # buffered bytes needed before parsing is worth trying again
        self._fragments: list[bytes] = []  # payloads of a fragmented message so far
        self._fragment_opcode = 0  # OP_TEXT or OP_BINARY while a fragmented message is open
        self._fragments_size = 0
        # Frames of any kind (control and continuation frames included: they never reach the
        # session's own message bound) this parser may still take; the protocol refills it.
        self.frames_left = FRAME_BURST

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            # Appending is amortised O(1) and the frame is parsed only once it is whole, so a
            # client trickling a large frame a byte at a time costs no quadratic copying.
            buffer += data
            if len(buffer) < self._need:
                return
            data = bytes(buffer)
            buffer.clear()
        pos = 0
        end = len(data)
        while pos < end:
            if end - pos < 2:
                self._keep(data, pos, 2)
                return
            self.frames_left -= 1
            if self.frames_left < 0:  # checked before the frame costs anything more
                raise FrameError(CLOSE_POLICY_VIOLATION, "too many frames")
            first = data[pos]
            second = data[pos + 1]
            opcode = first & 0x0F
            if first & 0x70:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits must be 0")
            if not second & 0x80:  # section 5.1: a server fails an unmasked client frame
                raise FrameError(CLOSE_PROTOCOL_ERROR, "incorrect masking")
            length = second & 0x7F
            if length < 126:
                head = pos + 6  # 2 header bytes and the 4-byte masking key
            elif length == 126:
                head = pos + 8
                if end < head:
                    self._keep(data, pos, 8)
                    return
                length = _U16(data, pos + 2)[0]
            else:
                head = pos + 14
                if end < head:
                    self._keep(data, pos, 14)
                    return
                length = _U64(data, pos + 2)[0]
            if opcode >= OP_CLOSE:
                if opcode > OP_PONG:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
                # Section 5.5: control frames are never fragmented and carry <= 125 bytes;
                # they may arrive between the fragments of a message.
                if not first & 0x80 or length > 125:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "invalid control frame")
            elif opcode == OP_CONTINUATION:
                if not self._fragment_opcode:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")
                if self._fragments_size + length > self._max_size:
                    raise FrameError(CLOSE_MESSAGE_TOO_BIG, "message too big")
            elif opcode <= OP_BINARY:
                if self._fragment_opcode:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "expected a continuation frame")
                if length > self._max_size:  # refused before its payload is even read
                    raise FrameError(CLOSE_MESSAGE_TOO_BIG, "message too big")
            else:
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
            stop = head + length
            if end < stop:
                self._keep(data, pos, stop - pos)
                return
            payload = apply_mask(data[head:stop], data[head - 4 : head])
            pos = stop
            if opcode >= OP_CLOSE:
                self._on_control(opcode, payload)
            elif first & 0x80:  # FIN: the message is complete
                if opcode == OP_CONTINUATION:
                    self._fragments.append(payload)
                    payload = b"".join(self._fragments)
                    opcode = self._fragment_opcode
                    self._fragments = []
                    self._fragments_size = 0
                    self._fragment_opcode = 0
                if opcode == OP_BINARY:
                    self.on_message(payload)
                else:
                    try:
                        text = payload.decode()
                    except UnicodeDecodeError:
                        raise FrameError(CLOSE_INVALID_DATA, "invalid UTF-8 text") from None
                    self.on_message(text)
            else:
                if opcode != OP_CONTINUATION:
                    self._fragment_opcode = opcode
                self._fragments.append(payload)
                self._fragments_size += length

    def _keep(self, data: bytes, pos: int, need: int) -> None:
        self._buffer += memoryview(data)[pos:]
        self._need = need


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
    _parser: FrameParser | None = None
    _early_data = False  # bytes arrived after the upgrade request, before the take-over
    _bytes_after_close = 0
    _refilled_at = 0.0  # when the parser's frame budget was last refilled
    _reaper: asyncio.TimerHandle | None = None  # drop_after's timer
    handshake_deadline: asyncio.TimerHandle | None = None  # the HTTP guard's, until we end

    def data_received(self, data: bytes) -> None:
        if self.close_sent:  # uvicorn: set once the server's close frame is written
            self._bytes_after_close += len(data)
            if self._bytes_after_close > MAX_BYTES_AFTER_CLOSE:
                self.transport.abort()
                return
        parser = self._parser
        if parser is not None:
            now = self.loop.time()
            parser.frames_left = min(
                FRAME_BURST, parser.frames_left + int((now - self._refilled_at) * FRAME_RATE)
            )
            self._refilled_at = now
            try:
                parser.feed(data)
            except FrameError as exc:
                self._fail(exc.code, exc.reason)
            return
        if self.handshake_initiated:
            self._early_data = True
        self.conn.receive_data(data)
        self.handle_events()  # frames parsed before a parser error, if any
        if self.conn.parser_exc is not None:
            self.handle_parser_exception()

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
        self._parser = FrameParser(self.config.ws_max_size, sink.message_received, self._control)
        self._refilled_at = self.loop.time()
        if self._early_data or self.conn.reader.buffer or not self.queue.empty():
            self._fail(CLOSE_PROTOCOL_ERROR, "data sent before the handshake response")
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

    def _fail(self, code: int, reason: str) -> None:
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
        # Nothing is read after this; the parser refers back to this protocol (its control
        # frame callback), a cycle that would keep the transport and the upgrade's headers
        # alive until the collector's next full pass.
        self._parser = None
