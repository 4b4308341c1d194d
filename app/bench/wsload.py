"""A lean Genesys-like AudioHook load generator: thousands of real-time calls in one process.

Each call is an asyncio protocol on a plain TCP socket: the signed upgrade request of
app/client/upgrade.py, `open`, then stereo PCMU frames of 200 ms in real time, a `ping` one
second after `opened` and every five seconds after (as Genesys does), `close`, and the WebSocket
close. One `FrameClock` paces every call: it ticks every 10 ms and each tick sends the frames of
the calls whose phase falls in that slot, so calls started at different times send at different
moments, as real calls do, instead of all at once every 200 ms.

Cheap on purpose (measured in the bench report as the generator's CPU): a call's audio frame is
built and masked once and then written as is; the masking key is reused for that call's audio
frames (RFC 6455 asks for a fresh key per frame; the server cannot tell the difference).
Server messages are parsed only as far as the bench needs: opened, pong, disconnect, closed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from websockets.utils import apply_mask

from app.client.session import Participant, media_offers
from app.client.upgrade import Endpoint, upgrade_headers
from app.protocol.messages import encode_client_message

FRAME_SECONDS: Final = 0.2
FRAME_SAMPLES: Final = 1600  # 200 ms at 8 kHz, per channel
STEREO_PCMU_FRAME: Final = FRAME_SAMPLES * 2  # bytes: one byte per sample, two channels
SLOTS_PER_FRAME: Final = 20  # the clock ticks every 10 ms
PING_FIRST_FRAMES: Final = 5  # 1 s after opened
PING_EVERY_FRAMES: Final = 25  # then every 5 s

_OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final, masked client frame (RFC 6455 §5.2)."""
    mask = mask or os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + mask + apply_mask(payload, mask)


def silence_frame() -> bytes:
    """200 ms of stereo PCMU near-silence (0xFF is PCMU zero); content is not inspected."""
    return b"\xff" * STEREO_PCMU_FRAME


@dataclass(slots=True)
class CallStats:
    """What one call measured; times from time.perf_counter unless said otherwise."""

    session_id: str
    connected: bool = False
    upgrade_seconds: float | None = None  # TCP connect start -> HTTP 101
    opened: bool = False
    open_seconds: float | None = None  # `open` written -> `opened` parsed
    closed: bool = False
    frames_sent: int = 0
    pings: int = 0
    pongs: int = 0
    failure: str | None = None
    send_times: list[float] | None = None  # time.time() of each frame, when sampled
    started_at: float = 0.0
    finished_at: float = 0.0


@dataclass(slots=True)
class CallPlan:
    endpoint: Endpoint
    api_key: str
    client_secret: str | None
    frames: int  # audio frames to send before `close`
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    record_send_times: bool = False


class FrameClock:
    """One timer for all calls: every 10 ms it sends the frames due in that slot.

    Slots are on an absolute grid; if the loop falls behind, the owed slots are run at once
    (frames are never skipped) and the lag is recorded.
    """

    def __init__(self) -> None:
        self._slots: list[dict[Call, None]] = [{} for _ in range(SLOTS_PER_FRAME)]
        self._slot_seconds = FRAME_SECONDS / SLOTS_PER_FRAME
        self._task: asyncio.Task[None] | None = None
        self._start = 0.0
        self._step = 0
        self.max_lag = 0.0
        self.lags: list[float] = []  # per tick, seconds behind the grid

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._start = loop.time()
        self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def add(self, call: Call) -> None:
        """Schedule `call` from the next slot on: its first frame leaves one slot from now."""
        self._slots[(self._step + 1) % SLOTS_PER_FRAME][call] = None

    def remove(self, call: Call) -> None:
        for slot in self._slots:
            slot.pop(call, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = self._start + (self._step + 1) * self._slot_seconds
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._step += 1
            lag = loop.time() - due
            self.lags.append(lag)
            self.max_lag = max(self.max_lag, lag)
            for call in list(self._slots[self._step % SLOTS_PER_FRAME]):
                call.tick()


class Call(asyncio.Protocol):
    """One AudioHook call over a raw socket; `done` resolves when the socket is gone."""

    def __init__(self, plan: CallPlan, clock: FrameClock, audio: bytes) -> None:
        self.plan = plan
        self.clock = clock
        self.session_id = plan.session_id
        self.stats = CallStats(self.session_id, send_times=[] if plan.record_send_times else None)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._frame = client_frame(_OP_BINARY, audio)
        self._samples = len(audio) // 2
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._upgraded = False
        self._seq = 0
        self._server_seq = 0
        self._position = 0
        self._open_sent_at = 0.0
        self._closing = False

    # --- connection ---------------------------------------------------------------------------
    def request(self) -> bytes:
        plan = self.plan
        endpoint = plan.endpoint
        headers = upgrade_headers(
            endpoint,
            api_key=plan.api_key,
            client_secret=plan.client_secret,
            organization_id=plan.organization_id,
            session_id=self.session_id,
            correlation_id=str(uuid.uuid4()),
        )
        lines = [
            f"GET {endpoint.request_target} HTTP/1.1",
            f"Host: {endpoint.authority}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
            "User-Agent: audiohook-gateway-bench",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop: not a subclass
        self._write(self.request())

    def connection_lost(self, exc: Exception | None) -> None:
        self.clock.remove(self)
        self.stats.finished_at = time.perf_counter()
        if not self.stats.closed and self.stats.failure is None:
            self.stats.failure = f"socket closed early: {exc or 'by the server'}"
        if not self.done.done():
            self.done.set_result(None)

    def abort(self, why: str) -> None:
        if self.stats.failure is None:
            self.stats.failure = why
        if self._transport is not None:
            self._transport.abort()
        elif not self.done.done():
            self.done.set_result(None)

    # --- receiving ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = bytes(self._buffer[: self._buffer.find(b"\r\n")])
            del self._buffer[: end + 4]
            if b" 101 " not in status_line + b" ":
                self.abort(f"upgrade refused: {status_line.decode(errors='replace')}")
                return
            self._upgraded = True
            self.stats.connected = True
            self.stats.upgrade_seconds = time.perf_counter() - self.stats.started_at
            self._send_message("open", _open_parameters(self.plan))
            self._open_sent_at = time.perf_counter()
        self._parse_frames()

    def _parse_frames(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
            start = 2
            if size == 126:
                if len(buffer) < 4:
                    return
                size, start = struct.unpack_from("!H", buffer, 2)[0], 4
            elif size == 127:
                if len(buffer) < 10:
                    return
                size, start = struct.unpack_from("!Q", buffer, 2)[0], 10
            if len(buffer) < start + size:
                return
            payload = bytes(buffer[start : start + size])
            del buffer[: start + size]
            if opcode == _OP_TEXT:
                self._on_message(orjson.loads(payload))
            elif opcode == _OP_CLOSE:
                self._write(client_frame(_OP_CLOSE, payload[:2]))
                if self._transport is not None:
                    self._transport.close()
            elif opcode == _OP_PING:
                self._write(client_frame(_OP_PONG, payload))

    def _on_message(self, message: dict[str, Any]) -> None:
        self._server_seq = message.get("seq", self._server_seq)
        kind = message.get("type")
        if kind == "opened":
            self.stats.opened = True
            self.stats.open_seconds = time.perf_counter() - self._open_sent_at
            self.clock.add(self)
        elif kind == "pong":
            self.stats.pongs += 1
        elif kind == "disconnect":
            self.stats.failure = f"disconnect: {message.get('parameters')}"
            self._close("disconnect")
        elif kind == "closed":
            self.stats.closed = True
            self._write(client_frame(_OP_CLOSE, struct.pack("!H", 1000)))

    # --- sending ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Called by the clock every 200 ms: the next frame, a ping when due, or `close`."""
        stats = self.stats
        if stats.frames_sent >= self.plan.frames:
            self._close("end")
            return
        if stats.send_times is not None:
            stats.send_times.append(time.time())
        self._write(self._frame)
        self._position += self._samples
        stats.frames_sent += 1
        sent = stats.frames_sent
        if sent == PING_FIRST_FRAMES or (
            sent > PING_FIRST_FRAMES and sent % PING_EVERY_FRAMES == 0
        ):
            stats.pings += 1
            self._send_message("ping", {})

    def _close(self, reason: str) -> None:
        self.clock.remove(self)
        if not self._closing:
            self._closing = True
            self._send_message("close", {"reason": reason})

    def _send_message(self, kind: str, parameters: dict[str, Any]) -> None:
        self._seq += 1
        text = encode_client_message(
            kind, self.session_id, self._seq, self._server_seq, self._position, parameters
        )
        self._write(client_frame(_OP_TEXT, text.encode()))

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)


def _open_parameters(plan: CallPlan) -> dict[str, Any]:
    return {
        "organizationId": plan.organization_id,
        "conversationId": str(uuid.uuid4()),
        "participant": Participant().to_parameter(),
        "media": media_offers(),
        "language": "en-US",
    }


async def run_call(
    plan: CallPlan,
    clock: FrameClock,
    audio: bytes,
    *,
    limit_seconds: float,
    on_created: Callable[[Call], None] | None = None,
) -> CallStats:
    """Dial, run and end one call; never raises (failures are in the stats)."""
    loop = asyncio.get_running_loop()
    call = Call(plan, clock, audio)
    if on_created is not None:
        on_created(call)
    call.stats.started_at = time.perf_counter()
    endpoint = plan.endpoint
    try:
        await loop.create_connection(lambda: call, endpoint.host, endpoint.port)
    except OSError as exc:
        call.stats.failure = f"connect: {exc}"
        return call.stats
    try:
        await asyncio.wait_for(asyncio.shield(call.done), limit_seconds)
    except TimeoutError:
        call.abort("timed out")
        await call.done
    return call.stats
