"""An HTTP protocol for uvicorn that closes connections which never finish their request head.

uvicorn arms no timer on a new connection until a first request has completed, so a client
that connects and sends nothing (or half a request line) would hold a socket forever and
escape every session limit. This subclass gives the request head a deadline; once the
headers are in, uvicorn's own handling (WebSocket upgrade, keep-alive timeout) takes over.
"""

from __future__ import annotations

import asyncio
import logging
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.observability import metrics
from app.transport.load_shedding import CONNECTED_AT

log = logging.getLogger("app.transport.request_deadline")


def with_request_deadline(seconds: float) -> type[HttpToolsProtocol]:
    """The uvicorn `http` protocol class with a `seconds` deadline for the request head."""

    class DeadlineHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _connected_at = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._connected_at = time.monotonic()
            self._deadline = self.loop.call_later(seconds, self._deadline_passed)

        def handle_websocket_upgrade(self) -> None:
            # The connection's start reaches admission in scope["state"] (load shedding by
            # handshake age); this protocol object is discarded after the upgrade.
            self.app_state = {**self.app_state, CONNECTED_AT: self._connected_at}
            super().handle_websocket_upgrade()

        def on_headers_complete(self) -> None:
            self._cancel_deadline()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_deadline()
            super().connection_lost(exc)

        def _cancel_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _deadline_passed(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                metrics.CONNECTIONS_REJECTED.labels("request_timeout").inc()
                client = f"{self.client[0]}" if self.client else "unknown"
                log.warning(
                    "no complete request in time; connection closed",
                    extra={"client_address": client, "deadline_seconds": seconds},
                )
                self.transport.close()

    return DeadlineHttpToolsProtocol
