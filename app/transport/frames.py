"""RFC 6455 client frames in, whole messages out: the parser of accepted AudioHook sessions,
and the read callback that feeds it.

The parser is pure computation on the bytes of each read (no I/O, no event loop); the read
callback only hands reads to it and reports a broken rule to its owner, the WebSocket protocol
(app/transport/ws_protocol.py), which does the I/O. Both are compiled with the other per-frame
modules in the compiled build (pyproject.toml, compiled-modules).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

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
        "_refilled_at",
        "frames_left",
        "on_message",
    )

    def __init__(
        self,
        max_size: int,
        on_message: Callable[[bytes | str], None],
        on_control: Callable[[int, bytes], None],
        now: float = 0.0,
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
        # session's own message bound) this parser may still take; `receive` refills it.
        self.frames_left = FRAME_BURST
        self._refilled_at = now  # when the budget was last refilled (the caller's clock)

    def receive(self, data: bytes, now: float) -> None:
        """`feed` the bytes of a read made at `now`, first refilling the frame budget at
        FRAME_RATE a second since the last read, up to FRAME_BURST."""
        refill = int((now - self._refilled_at) * FRAME_RATE)
        self._refilled_at = now
        self.frames_left = min(FRAME_BURST, self.frames_left + refill)
        self.feed(data)

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


class ReaderOwner(Protocol):
    """The WebSocket protocol a `DirectReader` reads for (app/transport/ws_protocol.py)."""

    close_sent: bool

    def read_after_close(self, data: bytes) -> None:
        """A read that arrived after the server's close frame (counted, bounded, parsed)."""

    def fail_connection(self, code: int, reason: str) -> None:
        """Send a close frame with `code` and drop the connection (RFC 6455 section 7.1.7)."""


class DirectReader:
    """The read callback of an accepted session.

    The WebSocket protocol installs `data_received` in place of its own once the session is
    taken over, so that in the compiled build each read goes from the event loop straight to
    compiled code: the interpreted callback it replaces cost a few per cent of the worker's
    CPU at 1,000 calls. After the server's close frame, reads go back to the protocol
    (`read_after_close`)."""

    __slots__ = ("_clock", "_owner", "_parser")

    def __init__(self, owner: ReaderOwner, parser: FrameParser, clock: Callable[[], float]) -> None:
        self._owner = owner
        self._parser = parser
        self._clock = clock

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        if owner.close_sent:
            owner.read_after_close(data)
            return
        try:
            self._parser.receive(data, self._clock())
        except FrameError as exc:
            owner.fail_connection(exc.code, exc.reason)
