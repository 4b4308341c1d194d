"""A minimal AudioHook server on 127.0.0.1, correct by default, with switchable faults.

Written for these tests only (not the gateway): one sequential receive loop per connection,
server seq counted per session, clientseq = seq of the last client message processed. Each
`Faults` field breaks one thing the way real servers get it wrong. The server records what
the client sent, so tests can check the client's side of the conversation too.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from app.security.signature import sign_request

UNOFFERED_MEDIA = {"type": "audio", "format": "L16", "channels": ["external"], "rate": 16000}


@dataclass
class Faults:
    reject_status: int | None = None  # answer the upgrade with this HTTP status
    binary_json: bool = False  # send JSON messages as binary frames
    omit_parameters: frozenset[str] = frozenset()  # message types sent without `parameters`
    opened_media: str = "select"  # select | none | unoffered | reordered
    opened_delay: float = 0.0
    opened_extra: dict[str, Any] = field(default_factory=dict)
    closed_clientseq_offset: int = 0
    pong_clientseq_offset: int = 0
    seq_skip_at: int | None = None  # this server seq number is skipped
    answer_close: bool = True
    answer_ping: bool = True
    message_after_closed: bool = False
    close_socket_on_close: bool = False  # drop the socket instead of answering close
    after_opened: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class Connection:
    """What one client did on one connection."""

    headers: dict[str, str]
    path: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    signature_ok: bool | None = None

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == msg_type]


class MiniServer:
    def __init__(
        self,
        faults: Faults | None = None,
        *,
        api_key: str = "test-key",
        client_secret: str | None = None,
    ) -> None:
        self.faults = faults or Faults()
        self.api_key = api_key
        self.client_secret = client_secret
        self.connections: list[Connection] = []
        self.port = 0
        self.secure = False

    @property
    def url(self) -> str:
        scheme = "wss" if self.secure else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/api/v1/audiohook/ws"

    @asynccontextmanager
    async def running(self, **serve_kwargs: Any) -> AsyncIterator[MiniServer]:
        self.secure = serve_kwargs.get("ssl") is not None
        async with serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            **serve_kwargs,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            yield self

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if self.faults.reject_status is not None:
            return conn.respond(self.faults.reject_status, "rejected by test server\n")
        return None

    def _signature_ok(self, request: Request) -> bool:
        """Recompute the signature from the received nonce/created (independent check)."""
        headers = request.headers
        signature_input = headers.get("Signature-Input", "")
        nonce = re.search(r';nonce="([^"]*)"', signature_input)
        created = re.search(r";created=(\d+)", signature_input)
        if self.client_secret is None or nonce is None or created is None:
            return self.client_secret is None
        expected = sign_request(
            api_key=headers.get("X-API-KEY", ""),
            client_secret_b64=self.client_secret,
            request_target=request.path,
            authority=headers.get("Host", ""),
            organization_id=headers.get("Audiohook-Organization-Id", ""),
            session_id=headers.get("Audiohook-Session-Id", ""),
            correlation_id=headers.get("Audiohook-Correlation-Id", ""),
            nonce=nonce.group(1),
            created=int(created.group(1)),
        )
        return expected == {
            "Signature-Input": signature_input,
            "Signature": headers.get("Signature", ""),
        }

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        conn = Connection(dict(request.headers.raw_items()), request.path)
        self.connections.append(conn)
        conn.signature_ok = self._signature_ok(request)
        authorized = conn.signature_ok and request.headers.get("X-API-KEY") == self.api_key
        session = _ServerSide(ws, conn, self.faults, request.headers["Audiohook-Session-Id"])
        try:
            await session.run(authorized)
        except ConnectionClosed:
            pass
        finally:
            for task in session.tasks:
                task.cancel()


class _ServerSide:
    def __init__(self, ws: ServerConnection, conn: Connection, faults: Faults, sid: str) -> None:
        self.ws, self.conn, self.faults, self.session_id = ws, conn, faults, sid
        self.seq = 0
        self.clientseq = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def send(
        self, msg_type: str, parameters: dict[str, Any], clientseq: int | None = None
    ) -> None:
        self.seq += 1
        if self.faults.seq_skip_at == self.seq:
            self.seq += 1
        message: dict[str, Any] = {
            "version": "2",
            "type": msg_type,
            "id": self.session_id,
            "seq": self.seq,
            "clientseq": self.clientseq if clientseq is None else clientseq,
            "parameters": parameters,
        }
        if msg_type in self.faults.omit_parameters:
            del message["parameters"]
        text = json.dumps(message)
        await self.ws.send(text.encode() if self.faults.binary_json else text)

    async def run(self, authorized: bool) -> None:
        faults = self.faults
        if not authorized:
            await self.send("disconnect", {"reason": "unauthorized", "info": "FAILED: bad key"})
        async for frame in self.ws:
            if isinstance(frame, bytes):
                self.conn.frames.append(frame)
                continue
            message = json.loads(frame)
            self.conn.messages.append(message)
            self.clientseq = message["seq"]
            msg_type = message["type"]
            if msg_type == "open" and authorized:
                await asyncio.sleep(faults.opened_delay)
                await self.send("opened", self._opened(message["parameters"]))
                for delay, late_type, params in faults.after_opened:
                    self.tasks.append(asyncio.create_task(self._later(delay, late_type, params)))
            elif msg_type == "ping" and faults.answer_ping:
                await self.send("pong", {}, self.clientseq + faults.pong_clientseq_offset)
            elif msg_type == "close":
                if faults.close_socket_on_close:
                    await self.ws.close()
                    return
                if faults.answer_close:
                    await self.send("closed", {}, self.clientseq + faults.closed_clientseq_offset)
                    if faults.message_after_closed:
                        entity = {"type": "transcript", "data": {}}
                        await self.send("event", {"entities": [entity]})

    def _opened(self, params: dict[str, Any]) -> dict[str, Any]:
        offers = params["media"]
        mode = self.faults.opened_media
        if mode == "none":
            media = []
        elif mode == "unoffered":
            media = [UNOFFERED_MEDIA]
        elif mode == "reordered":
            first = dict(offers[0])
            first["channels"] = list(reversed(first["channels"]))
            media = [first]
        else:
            media = [offers[0]]
        return {"media": media, "startPaused": False} | self.faults.opened_extra

    async def _later(self, delay: float, msg_type: str, params: dict[str, Any]) -> None:
        await asyncio.sleep(delay)
        await self.send(msg_type, params)
