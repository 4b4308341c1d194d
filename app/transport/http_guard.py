"""The uvicorn HTTP protocol for the gateway's listeners: every connection is answered or
closed in bounded time and bounded memory, whatever uvicorn's HTTP or WebSocket layer makes
of the request (see docs/http-guard.md).

- The request head is at most `max_head_bytes`, counted before bytes reach the parser
  (httptools accumulates the URL and each header without a bound): 431 beyond it.
- A deadline runs from connect until the application has taken over: the WebSocket
  handshake answered (accepted or denied) or an HTTP response started. Then it is closed.
- A WebSocket upgrade with a body (Content-Length, Transfer-Encoding) gets 400: llhttp hands
  it over as an upgrade, and the websockets handshake parser then refuses it silently.
- When that parser refuses a head for any other reason (a line over 8 KiB, too many headers,
  HTTP/1.0, ...), uvicorn writes nothing and never closes: the guard answers 400 or 431.
- One request per connection: the main listener exists for upgrades, the operational one for
  probes and scrapes. Keep-alive and pipelining would reopen the head gaps, and a body that
  never ends could hold the socket after its response; the connection closes after it.
- A source (an IPv4 address or an IPv6 network) may have only
  `max_unfinished_requests_per_source` connections at a time on a listener whose request
  head is not complete; a further one is closed as it connects.
  The deadline bounds how long each is held, this how many (descriptors are the process's,
  so the operational listener is bounded too). On the main listener all sources together
  hold at most what the open-file limit leaves beside the live calls (``app/open_files.py``),
  and sources outside the IP allowlist half of that.

Each refusal is counted (`connections_rejected{cause}`), logged once, and charged to the
source's upgrade rate limit (not one closed because others filled the total). uvicorn
internals relied on are marked "uvicorn:".
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Literal

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders

from app.observability import metrics
from app.observability.logging import refusal_log
from app.security.ipallow import contains, parse_address
from app.transport.handshake import plain_upgrade_key
from app.transport.load_shedding import (
    CONNECTED_AT,
    HANDSHAKE_CPU,
    OVERLOADED_TEXT,
    RETRY_AFTER_SECONDS,
    HandshakeCpu,
)
from app.transport.source_limiter import PER_SOURCE, TOTAL, SourceConnectionLimit
from app.transport.ws_protocol import AudioHookWebSocketProtocol

if TYPE_CHECKING:
    from app.transport.host import GuardHost

log = logging.getLogger("app.transport.http_guard")

LOGGED_CHARS = 80  # client-controlled values in log lines are cut to this
REASONS = {
    400: b"Bad Request",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is kept on the protocol
    (httptools replaces a callback's exception with HttpParserCallbackError)."""


def _clip(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return text[:LOGGED_CHARS] + ("..." if len(text) > LOGGED_CHARS else "")


def guarded_http_protocol(
    max_head_bytes: int,
    deadline_seconds: float,
    unfinished: SourceConnectionLimit,
    gateway: GuardHost | None = None,
) -> type[HttpToolsProtocol]:
    """The uvicorn `http` protocol class of one listener. `unfinished`: its count of
    connections per source without a whole request head. With `gateway` (the main
    listener), refusals are charged to `gateway.upgrade_limiter`, upgrades may be shed, and
    its trusted proxies are not counted in `unfinished`."""
    guard_refusals = refusal_log(log)

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        unfinished_per_source = unfinished
        _deadline: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _head_complete = False
        _messages = 0
        _finished = False  # refused, upgraded or past its one request: no more parsing
        _ws: asyncio.BaseProtocol | None = None  # uvicorn's WebSocket protocol after upgrade
        _refusal: tuple[int, str, str] | None = None
        _connected_at = 0.0
        _unfinished_source: str | None = None  # its place in `unfinished`
        _unfinished_allowed = True  # and whether its source is in the IP allowlist
        _cpu: HandshakeCpu  # what this connection has cost so far (from connection_made)

        def handle_websocket_upgrade(self) -> None:
            # The connection's start and its CPU count reach admission in scope["state"]
            # (load shedding). uvicorn: the WebSocket protocol copies app_state into the scope.
            self.app_state = {
                **self.app_state,
                CONNECTED_AT: self._connected_at,
                HANDSHAKE_CPU: self._cpu,
            }
            protocol_class = self.ws_protocol_class
            key = plain_upgrade_key(
                self.parser.get_method(),
                self.parser.get_http_version(),
                self.url,
                self.headers,
                extensions_ignored=not self.config.ws_per_message_deflate,
            )
            if (
                key is None
                or not isinstance(protocol_class, type)
                or not issubclass(protocol_class, AudioHookWebSocketProtocol)
            ):
                super().handle_websocket_upgrade()  # websockets parses, checks and answers
                return
            self.connections.discard(self)  # as uvicorn's handle_websocket_upgrade
            protocol = protocol_class(
                config=self.config, server_state=self.server_state, app_state=self.app_state
            )
            scheme: Literal["ws", "wss"] = "wss" if self.scheme == "https" else "ws"
            protocol.start_plain(
                self.transport, (self.server, self.client, scheme), self.url, self.headers, key
            )
            self.transport.set_protocol(protocol)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            cpu = self._cpu = HandshakeCpu()
            cpu.start()
            super().connection_made(transport)
            self._connected_at = time.monotonic()
            if not (unfinished.limit or unfinished.total_limit) or self._hold_unfinished_place():
                self._deadline = self.loop.call_later(deadline_seconds, self._deadline_passed)
            cpu.stop()

        def _hold_unfinished_place(self) -> bool:
            """A source may hold only so many connections that have not sent their whole
            request head (each holds a descriptor until the deadline); beyond that a new one
            is refused as it connects, before any parsing. False: refused and closed."""
            address = parse_address(self.client[0]) if self.client else None
            if address is None:
                return True
            allowed = True
            if gateway is not None:
                if contains(gateway.allowlist.trusted_proxies, address):
                    return True  # a trusted proxy speaks for many clients
                allowed = gateway.allowlist.allows(address)
            source = unfinished.hold(address, allowed)
            if source is not None:
                self._unfinished_source, self._unfinished_allowed = source, allowed
                if gateway is not None:
                    metrics.UNFINISHED_REQUESTS.inc()
                return True
            self._finished = True
            bound = unfinished.bound_reached(address, allowed)
            if bound == PER_SOURCE:
                held = f"over {unfinished.limit} from one source"
            elif bound == TOTAL:
                held = f"{unfinished.total_limit} in all"
            else:
                held = f"{unfinished.total_limit // 2} from outside the IP allowlist"
            detail = f"connections without a whole request head: {held}"
            # Only a source past its own bound is charged its upgrade budget: others'
            # connections filling the total do not cost it.
            self._reject(None, "too_many_connections", detail, charge_source=bound == PER_SOURCE)
            self.transport.close()
            return False

        def _release_unfinished_place(self) -> None:
            source, self._unfinished_source = self._unfinished_source, None
            if source is not None:
                unfinished.release(source, self._unfinished_allowed)
                if gateway is not None:
                    metrics.UNFINISHED_REQUESTS.dec()

        def connection_lost(self, exc: Exception | None) -> None:
            self._release_unfinished_place()
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # Replaces uvicorn's data_received (feed, then upgrade or 400) entirely.
            if self._finished:
                return
            self._cpu.start()
            try:
                self._read(data)
            finally:
                self._cpu.stop()

        def _read(self, data: bytes) -> None:
            self._unset_keepalive_if_required()
            if not self._head_complete:
                room = max_head_bytes - self._head_bytes
                self._head_bytes += min(len(data), room)
                if len(data) > room:
                    self._feed(data[:room])
                    if self._finished:
                        self._hand_on(data[room:])
                        return
                    if not self._head_complete:
                        self._refuse(431, "request_head_too_large", "request head too large")
                        return
                    data = data[room:]
            self._feed(data)

        def _feed(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                self._upgrade()
                self._hand_on(data[upgrade.args[0] :])
            except httptools.HttpParserError:
                refusal, self._refusal = self._refusal, None
                if refusal is not None:
                    self._refuse(*refusal)
                elif self._messages > 1:  # a second request: let the first one's answer end it
                    self._finished = True
                else:
                    self._refuse(400, "bad_request", "invalid HTTP request")

        # Parser callbacks (uvicorn: on_message_begin resets self.url and self.headers).

        def on_message_begin(self) -> None:
            self._messages += 1
            if self._messages > 1:
                raise _Refused
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head_complete = True
            self._release_unfinished_place()
            connection = [
                token.strip().lower()
                for name, value in self.headers
                if name == b"connection"
                for token in value.split(b",")
            ]
            upgrade = [value.strip().lower() for name, value in self.headers if name == b"upgrade"]
            has_body = any(
                name == b"transfer-encoding" or (name == b"content-length" and value != b"0")
                for name, value in self.headers
            )
            if b"upgrade" in connection and upgrade == [b"websocket"] and has_body:
                self._refusal = (400, "bad_request", "WebSocket upgrade with a body")
                raise _Refused
            super().on_headers_complete()
            if self.cycle is not None:  # a plain HTTP request: one per connection
                self.cycle.keep_alive = False

        def _upgrade(self) -> None:
            self._finished = True
            if not self._should_upgrade():
                # An Upgrade to anything else is ignored (RFC 9110 7.8): the request is
                # answered as plain HTTP by the cycle uvicorn started in on_headers_complete.
                return
            if gateway is not None and gateway.load_shedder.shed(self.headers, self._connected_at):
                # Overloaded (counted and logged by the shedder): the cheapest refusal there
                # is, before the WebSocket layer and the application see the request.
                self._answer(503, OVERLOADED_TEXT, b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS)
                return
            self.handle_websocket_upgrade()
            self._ws = self.transport.get_protocol()
            # The request is handed over: uvicorn's parser, which refers back to this
            # protocol, is not needed again (a cycle would keep all of it for the collector).
            self.parser = None  # type: ignore[assignment]
            if isinstance(self._ws, AudioHookWebSocketProtocol):
                # Its end cancels the deadline, which holds this protocol and so the
                # transport: a connection that has gone is not kept for the open timeout.
                self._ws.handshake_deadline = self._deadline
            # uvicorn: the sans-I/O WebSocket protocol sets `handshake_initiated` once the
            # websockets parser accepted the head; if it refused it, nothing is sent.
            error = getattr(getattr(self._ws, "conn", None), "handshake_exc", None)
            if getattr(self._ws, "handshake_initiated", True):
                response = getattr(self._ws, "response", None)
                if getattr(self._ws, "handshake_complete", False) and response is not None:
                    # Answered already, before the application ran: websockets refused the
                    # handshake itself (a missing key, another version). Counted here.
                    status = response.status_code
                    self._reject(status, "bad_request", f"refused by the handshake: {error}")
                return
            if isinstance(error, RequestLineTooLong | HeaderLineTooLong | TooManyHeaders):
                self._refuse(431, "request_head_too_large", "request line or header too large")
            else:
                self._refuse(400, "bad_request", f"refused by the handshake parser: {error}")

        def _hand_on(self, rest: bytes) -> None:
            """Bytes that shared a read with the upgrade request: uvicorn hands the WebSocket
            protocol the request head alone and would lose them. A client must wait for the
            response (RFC 6455 section 4.1), so there they are early data: counted, and the
            connection failed at the take-over, not left waiting for an `open` it lost."""
            ws = self._ws
            if rest and isinstance(ws, AudioHookWebSocketProtocol) and not ws.handshake_complete:
                ws.data_received(rest)

        def _taken_over(self) -> bool:
            if self._ws is not None:  # uvicorn: set once the handshake is answered or lost
                return bool(getattr(self._ws, "handshake_complete", True))
            return self.cycle is not None and self.cycle.response_started

        def _deadline_passed(self) -> None:
            self._deadline = None
            if not self.transport.is_closing() and not self._taken_over():
                stage = "request head" if not self._head_complete else "handshake or response"
                self._reject(None, "request_timeout", f"{stage} not complete in time")
                self.transport.close()
            if isinstance(self._ws, AudioHookWebSocketProtocol):
                self._ws.handshake_deadline = None
            self._ws = None  # upgraded or not, this protocol is done

        def _refuse(self, status: int, cause: str, detail: str) -> None:
            self._finished = True
            self._release_unfinished_place()
            self._reject(status, cause, detail)
            self._answer(status, detail)

        def _answer(self, status: int, text: str, extra_headers: bytes = b"") -> None:
            """Write a whole response and close: the connection ends with it."""
            if self.transport.is_closing():
                return
            body = f"{text}\n".encode()
            head = b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])
            head += b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            head += extra_headers + b"content-length: %d\r\n\r\n" % len(body)
            self.transport.write(head + body)
            self.transport.close()

        def _reject(
            self, status: int | None, cause: str, detail: str, charge_source: bool = True
        ) -> None:
            """Count, log once and charge the source's upgrade budget (`charge_source`)."""
            metrics.CONNECTIONS_REJECTED.labels(cause).inc()
            peer = self.client[0] if self.client else None
            client = peer
            if gateway is not None:
                forwarded = [
                    value.decode("latin-1")
                    for name, value in ((self.headers or []) if self._head_complete else [])
                    if name == b"x-forwarded-for"
                ]
                allowlist = gateway.allowlist
                address = allowlist.client_address(peer, forwarded)
                client = str(address) if address is not None else "unknown"
                # A trusted proxy that could not name its client is not charged for it.
                trusted = address is None or contains(allowlist.trusted_proxies, address)
                if charge_source and not trusted:
                    gateway.upgrade_limiter.allow(address)
            guard_refusals.log(
                logging.WARNING,
                cause,
                "request refused before the application",
                {
                    "client_address": client,
                    "status": status,
                    "cause": cause,
                    "detail": _clip(detail),
                    "target": _clip(getattr(self, "url", None)),
                    "head_bytes": self._head_bytes,
                },
            )

    return GuardedHttpToolsProtocol
