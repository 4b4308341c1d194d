"""A bare AudioHook connection whose socket the test controls: it reads only when asked.

`WireClient` speaks WebSocket through the sans-I/O `websockets.client.ClientProtocol` over a
plain TCP socket, so a test can pick the source address (any 127.0.0.0/8 address, for the
per-source limits), shrink the receive buffer, stop reading altogether, or send frames no
well-behaved client would. AudioHook bookkeeping (seq, serverseq, position) is kept right.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from app.client.counters import ClientCounters
from app.client.upgrade import Endpoint, upgrade_headers
from tests.support.gateway_process import TEST_API_KEY, TEST_CLIENT_SECRET, TEST_ORG_ID

READ_CHUNK = 65536
STEREO_PCMU: dict[str, object] = {
    "type": "audio",
    "format": "PCMU",
    "channels": ["external", "internal"],
    "rate": 8000,
}
STEREO_BYTES_PER_SAMPLE = 2  # one µ-law byte per channel


class Refused(Exception):
    """The upgrade was answered with an HTTP status other than 101."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.headers = headers or {}  # names in lower case


class WireClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: ClientProtocol,
        session_id: str,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.session_id = session_id
        self.counters = ClientCounters(session_id)  # seq, server seq, position
        self.messages: list[dict[str, Any]] = []  # every server message, in order
        self.close_code: int | None = None  # the server's close frame, if one came
        self.pongs: list[bytes] = []  # payloads of the WebSocket pongs received
        self.eof = False
        self._pending: list[dict[str, Any]] = []

    # --- connecting ---------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        uri: str,
        *,
        api_key: str = TEST_API_KEY,
        client_secret: str | None = TEST_CLIENT_SECRET,
        source: str = "127.0.0.1",
        receive_buffer: int | None = None,
        correlation_id: str | None = None,
        timeout: float = 5.0,
        session_id: str | None = None,
        authority: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> WireClient:
        """Dial from `source` and upgrade; `Refused` for an HTTP answer other than 101.
        `authority` signs for another host[:port]; `headers` replace any request header,
        Host included (as a proxy in front of the gateway may)."""
        endpoint = Endpoint.parse(uri)
        session_id = session_id or str(uuid.uuid4())
        signed = upgrade_headers(
            endpoint if authority is None else replace(endpoint, authority=authority),
            api_key=api_key,
            client_secret=client_secret,
            organization_id=TEST_ORG_ID,
            session_id=session_id,
            correlation_id=correlation_id or str(uuid.uuid4()),
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if receive_buffer is not None:  # before connect, so the window stays small
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.bind((source, 0))
            sock.setblocking(False)
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, (endpoint.host, endpoint.port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK * 4)
        protocol = ClientProtocol(parse_uri(uri), max_size=None)
        client = cls(reader, writer, protocol, session_id)
        request = protocol.connect()
        for name, value in (signed | dict(headers or {})).items():
            with contextlib.suppress(KeyError):
                del request.headers[name]
            request.headers[name] = value
        protocol.send_request(request)
        try:
            async with asyncio.timeout(timeout):
                await client._flush()
                response = await client._read_response()
        except BaseException:
            client.abort()
            raise
        if response.status_code != 101:
            client.abort()
            answer = {name.lower(): value for name, value in response.headers.raw_items()}
            raise Refused(response.status_code, bytes(response.body or b""), answer)
        return client

    async def _read_response(self) -> Response:
        while True:
            data = await self.reader.read(READ_CHUNK)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            for event in self.protocol.events_received():
                if isinstance(event, Response):
                    return event
            if not data:
                raise ConnectionError("connection closed during the handshake")

    @property
    def local_port(self) -> int:
        port: int = self.writer.get_extra_info("sockname")[1]
        return port

    # --- sending ------------------------------------------------------------------------------

    async def _flush(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        await self._flush()

    async def send_in_one_write(self, frames: list[str | bytes]) -> None:
        """Text and binary frames in a single TCP write (one read for the server, mostly)."""
        for frame in frames:
            if isinstance(frame, str):
                self.protocol.send_text(frame.encode())
            else:
                self.protocol.send_binary(frame)
        await self._flush()

    async def send_audio(self, frame: bytes) -> None:
        self.protocol.send_binary(frame)
        await self._flush()
        self.counters.position += len(frame) // STEREO_BYTES_PER_SAMPLE

    async def send(self, msg_type: str, parameters: dict[str, Any] | None = None) -> int:
        text = self.counters.message(msg_type, parameters or {})
        await self.send_text(text)
        return self.counters.seq

    async def send_open(self) -> None:
        await self.send(
            "open",
            {
                "organizationId": TEST_ORG_ID,
                "conversationId": str(uuid.uuid4()),
                "participant": {
                    "id": str(uuid.uuid4()),
                    "ani": "+1-555-555-1234",
                    "aniName": "Test",
                    "dnis": "+1-800-555-6789",
                },
                "media": [STEREO_PCMU],
                "language": "en-US",
            },
        )

    async def open(self, timeout: float = 5.0) -> dict[str, Any]:
        await self.send_open()
        opened = await self.expect("opened", timeout)
        assert opened["parameters"]["media"] == [STEREO_PCMU], opened
        return opened

    async def close(self, reason: str = "end", timeout: float = 5.0) -> dict[str, Any]:
        await self.send("close", {"reason": reason})
        return await self.expect("closed", timeout)

    # --- receiving ----------------------------------------------------------------------------

    async def receive(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next server message; None once the server closed the connection."""
        async with asyncio.timeout(timeout):
            while not self._pending:
                if self.eof:
                    return None
                await self._read_some()
        return self._pending.pop(0)

    async def expect(self, msg_type: str, timeout: float = 5.0) -> dict[str, Any]:
        """Skip pongs and events; the next other message must be `msg_type`."""
        while True:
            message = await self.receive(timeout)
            assert message is not None, f"connection closed while waiting for {msg_type}"
            if message["type"] in ("pong", "event"):
                continue
            assert message["type"] == msg_type, message
            return message

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Read (and keep) whatever still comes until the server ends the connection."""
        async with asyncio.timeout(timeout):
            while not self.eof:
                await self._read_some()
        return self.close_code

    async def _read_some(self) -> None:
        try:
            data = await self.reader.read(READ_CHUNK)
        except ConnectionError:
            data = b""  # the server reset (or dropped) the connection: as good as closed
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
            self.eof = True
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
        with contextlib.suppress(ConnectionError):
            await self._flush()  # close echo, pongs

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT:
            message = orjson.loads(frame.data)
            assert message["seq"] == self.counters.server_seq + 1, ("server seq gap", message)
            self.counters.server_seq = message["seq"]
            self.messages.append(message)
            self._pending.append(message)
        elif frame.opcode is Opcode.BINARY:
            raise AssertionError("the server sent a binary frame")
        elif frame.opcode is Opcode.PONG:
            self.pongs.append(bytes(frame.data))
        elif frame.opcode is Opcode.CLOSE:
            close = self.protocol.close_rcvd
            self.close_code = close.code if close is not None else None

    # --- ending -------------------------------------------------------------------------------

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()

    async def aclose(self) -> None:
        self.abort()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
