"""A scripted, low-level AudioHook client for gateway tests.

Unlike `app.client.session` (a well-behaved Genesys-like call), `RawClient` does exactly what
a test tells it, one message at a time: it keeps `seq`, `serverseq` and `position` right by
default and lets a test set any of them (or the session id) wrong on purpose. Every server
message it receives passes the conformance suite's "common checks" (version, id, seq = last + 1,
clientseq) and the project's strict `ServerMessageChecker`; the checker's findings are kept in
`findings` for tests that want a clean bill.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.client.checks import Finding, ServerMessageChecker
from app.client.counters import ClientCounters
from app.client.upgrade import Endpoint, upgrade_headers
from app.protocol.media import MediaFormat
from app.protocol.messages import NULL_UUID, format_duration
from app.security.signature import (
    REQUIRED_COMPONENTS,
    SignatureParam,
    compute_mac,
    signature_base,
    signature_params_value,
)
from tests.support.gateway_process import TEST_API_KEY, TEST_CLIENT_SECRET, TEST_ORG_ID

DEFAULT_TIMEOUT = 5.0
PARTICIPANT = {
    "id": "4a2c6d52-7d3c-4a7e-9a55-2f3d1c0b9e11",
    "ani": "+1-555-555-1234",
    "aniName": "John Doe",
    "dnis": "+1-800-555-6789",
}
PROBE_PARTICIPANT = {"id": NULL_UUID, "ani": "", "aniName": "", "dnis": ""}


def offer(fmt: str = "PCMU", *channels: str, rate: int = 8000) -> dict[str, Any]:
    """One `open.media` entry; channels default to stereo [external, internal]."""
    return {
        "type": "audio",
        "format": fmt,
        "channels": list(channels or ("external", "internal")),
        "rate": rate,
    }


def genesys_offers(fmt: str = "PCMU", *, inverted: bool = False) -> list[dict[str, Any]]:
    """The three offers Genesys makes: stereo, then each channel alone."""
    first, second = ("internal", "external") if inverted else ("external", "internal")
    return [offer(fmt, first, second), offer(fmt, first), offer(fmt, second)]


def new_id() -> str:
    return str(uuid.uuid4())


def custom_signature_headers(
    endpoint: Endpoint,
    headers: Mapping[str, str],
    client_secret: str,
    params: Sequence[SignatureParam],
    *,
    components: Sequence[str] = REQUIRED_COMPONENTS,
    label: str = "sig1",
) -> dict[str, str]:
    """`Signature-Input`/`Signature` with any parameters (e.g. a foreign `alg` or `keyid`),
    correctly MACed with `client_secret` over `headers` (the AudioHook headers)."""
    lower = {name.lower(): value for name, value in headers.items()}
    derived = {"@request-target": endpoint.request_target, "@authority": endpoint.authority}
    values = [(name, derived[name] if name in derived else lower[name]) for name in components]
    params_value = signature_params_value(components, params)
    mac = compute_mac(base64.b64decode(client_secret), signature_base(values, params_value))
    return {
        "Signature-Input": f"{label}={params_value}",
        "Signature": f"{label}=:{base64.b64encode(mac).decode()}:",
    }


def fresh_nonce() -> str:
    return base64.b64encode(secrets.token_bytes(18)).decode()


@dataclass(frozen=True, slots=True)
class ServerMessage:
    type: str
    seq: int
    clientseq: int
    parameters: dict[str, Any]
    text: str
    received_at: float  # time.monotonic()

    @property
    def reason(self) -> Any:
        return self.parameters.get("reason")

    @property
    def info(self) -> Any:
        return self.parameters.get("info")


@dataclass(frozen=True, slots=True)
class Rejection:
    """An upgrade answered with an HTTP status instead of 101."""

    status: int
    body: str
    seconds: float  # from starting to connect until the answer


@dataclass(slots=True)
class UpgradeRequest:
    """What `RawClient` sends in the upgrade request (built by `RawClient.request`)."""

    uri: str
    headers: dict[str, str]
    session_id: str
    organization_id: str


class RawClient:
    """One WebSocket to the gateway, driven step by step by a test."""

    def __init__(
        self, ws: ClientConnection, request: UpgradeRequest, connect_started_at: float
    ) -> None:
        self.ws = ws
        self.upgrade = request
        self.session_id = request.session_id
        self.organization_id = request.organization_id
        self.connect_started_at = connect_started_at  # time.monotonic() before dialling
        self.counters = ClientCounters(self.session_id)  # seq, server seq, position
        self.media: MediaFormat | None = None
        self.offers: list[dict[str, Any]] = []
        self.received: list[ServerMessage] = []
        self.findings: list[Finding] = []
        self.checker = ServerMessageChecker(self.session_id, [])

    @property
    def seq(self) -> int:
        """The last client seq sent."""
        return self.counters.seq

    @seq.setter
    def seq(self, value: int) -> None:
        self.counters.seq = value

    @property
    def server_seq(self) -> int:
        """The last server seq received."""
        return self.counters.server_seq

    @server_seq.setter
    def server_seq(self, value: int) -> None:
        self.counters.server_seq = value

    @property
    def position(self) -> int:
        """Samples per channel on the client's timeline."""
        return self.counters.position

    @position.setter
    def position(self, value: int) -> None:
        self.counters.position = value

    # --- connecting ---------------------------------------------------------------------------

    @staticmethod
    def request(
        uri: str,
        *,
        api_key: str = TEST_API_KEY,
        client_secret: str | None = TEST_CLIENT_SECRET,
        organization_id: str = TEST_ORG_ID,
        session_id: str | None = None,
        correlation_id: str | None = None,
        authority: str | None = None,
        nonce: str | None = None,
        created: int | None = None,
        headers: Mapping[str, str | None] | None = None,
    ) -> UpgradeRequest:
        """Signed AudioHook upgrade headers; `authority` signs for another host[:port];
        `headers` then overrides or (with None) removes individual headers."""
        endpoint = Endpoint.parse(uri)
        if authority is not None:
            endpoint = replace(endpoint, authority=authority)
        session_id = session_id or new_id()
        built = upgrade_headers(
            endpoint,
            api_key=api_key,
            client_secret=client_secret,
            organization_id=organization_id,
            session_id=session_id,
            correlation_id=correlation_id or new_id(),
            nonce=nonce,
            created=created,
        )
        for name, value in (headers or {}).items():
            built.pop(name, None)
            if value is not None:
                built[name] = value
        return UpgradeRequest(uri, built, session_id, organization_id)

    @classmethod
    async def connect(
        cls, uri: str | UpgradeRequest, *, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any
    ) -> RawClient:
        """Dial and upgrade; `kwargs` go to `request()`. InvalidStatus on an HTTP refusal."""
        request = uri if isinstance(uri, UpgradeRequest) else cls.request(uri, **kwargs)
        started = time.monotonic()
        ws = await connect(
            request.uri,
            additional_headers=request.headers,
            compression=None,
            proxy=None,
            open_timeout=timeout,
            ping_interval=None,
            close_timeout=2.0,
            max_size=1 << 20,
        )
        return cls(ws, request, started)

    @classmethod
    async def rejection(
        cls, uri: str | UpgradeRequest, *, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any
    ) -> Rejection:
        """Dial expecting an HTTP refusal of the upgrade; AssertionError if it is accepted."""
        started = time.monotonic()
        try:
            client = await cls.connect(uri, timeout=timeout, **kwargs)
        except InvalidStatus as exc:
            body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
            return Rejection(exc.response.status_code, body, time.monotonic() - started)
        await client.aclose()
        raise AssertionError("the upgrade was accepted; expected an HTTP refusal")

    async def aclose(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- sending ------------------------------------------------------------------------------

    async def send(
        self,
        msg_type: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        seq: int | None = None,
        serverseq: int | None = None,
        position: int | str | None = None,
        session_id: str | None = None,
    ) -> str:
        """Send one client message. Bookkeeping is right unless a keyword overrides it; an
        explicit `seq` becomes the client's seq (the next message follows it)."""
        self.seq = self.seq + 1 if seq is None else seq
        position = self.position if position is None else position
        message = {
            "version": "2",
            "type": msg_type,
            "id": session_id or self.session_id,
            "seq": self.seq,
            "serverseq": self.server_seq if serverseq is None else serverseq,
            "position": format_duration(position) if isinstance(position, int) else position,
            "parameters": dict(parameters or {}),
        }
        text = json.dumps(message, separators=(",", ":"))
        self.checker.sent(msg_type, self.seq)
        await self.ws.send(text)
        return text

    async def send_text(self, text: str) -> None:
        """A raw text frame (no bookkeeping)."""
        await self.ws.send(text)

    async def send_audio(self, frame: bytes) -> None:
        """A binary frame; the position advances by the whole samples it holds, if any."""
        await self.ws.send(frame)
        if self.media is not None:
            self.position += len(frame) // self.media.bytes_per_sample_group

    def open_parameters(
        self,
        offers: Sequence[Mapping[str, Any]] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        parameters: dict[str, Any] = {
            "organizationId": self.organization_id,
            "conversationId": new_id(),
            "participant": dict(PARTICIPANT),
            "media": [dict(item) for item in (genesys_offers() if offers is None else offers)],
            "language": "en-US",
        }
        parameters.update(overrides)
        return parameters

    async def send_open(
        self, offers: Sequence[Mapping[str, Any]] | None = None, **overrides: Any
    ) -> dict[str, Any]:
        parameters = self.open_parameters(offers, **overrides)
        media = parameters.get("media")
        self.offers = list(media) if isinstance(media, list) else []
        self.checker = ServerMessageChecker(self.session_id, self.offers)
        await self.send("open", parameters)
        return parameters

    async def open(
        self, offers: Sequence[Mapping[str, Any]] | None = None, **overrides: Any
    ) -> ServerMessage:
        """Send `open` and expect `opened` (common checks); remembers the selected media."""
        await self.send_open(offers, **overrides)
        return await self.expect("opened")

    async def close(
        self, reason: str = "end", *, timeout: float = DEFAULT_TIMEOUT
    ) -> ServerMessage:
        """Send `close` and expect `closed` echoing its seq."""
        await self.send("close", {"reason": reason})
        return await self.expect("closed", timeout=timeout)

    # --- receiving ----------------------------------------------------------------------------

    async def receive(self, timeout: float = DEFAULT_TIMEOUT) -> ServerMessage:
        """The next server message, after the common checks (version, id, seq = last + 1)."""
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        now = time.monotonic()
        assert isinstance(frame, str), f"the server sent a binary frame of {len(frame)} bytes"
        checked = self.checker.check_text(frame)
        self.findings.extend(checked.findings)
        message = json.loads(frame)
        assert isinstance(message, dict), frame
        assert message.get("version") == "2", frame
        assert message.get("id") == self.session_id, frame
        assert message.get("seq") == self.server_seq + 1, (
            f"server seq {message.get('seq')}, expected {self.server_seq + 1}: {frame}"
        )
        assert type(message.get("clientseq")) is int, frame
        assert isinstance(message.get("parameters"), dict), frame
        assert isinstance(message.get("type"), str), frame
        self.server_seq = message["seq"]
        received = ServerMessage(
            message["type"], message["seq"], message["clientseq"], message["parameters"], frame, now
        )
        self.received.append(received)
        if received.type == "opened":
            media = received.parameters.get("media")
            if isinstance(media, list) and media:
                self.media = MediaFormat.from_offer(media[0])
        return received

    async def expect(
        self,
        msg_type: str,
        *,
        clientseq: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ServerMessage:
        """The next message must be `msg_type` with `clientseq` (default: the last seq sent)."""
        message = await self.receive(timeout)
        assert message.type == msg_type, f"expected {msg_type}, got {message.text}"
        expected = self.seq if clientseq is None else clientseq
        assert message.clientseq == expected, (
            f"{msg_type}.clientseq is {message.clientseq}, expected {expected}: {message.text}"
        )
        return message

    async def expect_disconnect(
        self,
        reason: str,
        *,
        clientseq: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ServerMessage:
        """A `disconnect` with `reason` and, if any, a short string `info`."""
        message = await self.expect("disconnect", clientseq=clientseq, timeout=timeout)
        assert message.reason == reason, message.text
        info = message.info
        assert info is None or (isinstance(info, str) and 0 < len(info) <= 200), message.text
        return message

    async def expect_socket_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Wait for the server to close the socket; no message may arrive first. Returns the
        close code the server sent (None if it sent none)."""
        try:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None
        raise AssertionError(f"expected the socket to close, got {frame!r:.200}")

    async def expect_silence(self, seconds: float) -> None:
        """Nothing may arrive for `seconds` (the socket may stay open)."""
        try:
            frame = await asyncio.wait_for(self.ws.recv(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected no message, got {frame!r:.200}")

    @property
    def errors(self) -> list[Finding]:
        """Strict-checker findings of severity error (what the Genesys client would reject)."""
        return [finding for finding in self.findings if finding.severity == "error"]

    def assert_conformant(self) -> None:
        assert not self.errors, [finding.text for finding in self.errors]
