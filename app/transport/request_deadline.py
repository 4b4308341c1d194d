"""An HTTP protocol for uvicorn that closes connections which never finish their request head.

uvicorn arms no timer on a new connection until a first request has completed, so a client
that connects and sends nothing (or half a request line) would hold a socket forever and
escape every session limit. This subclass gives the request head a deadline; once the
headers are in, uvicorn's own handling (WebSocket upgrade, keep-alive timeout) takes over.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.observability import metrics

log = logging.getLogger("app.transport.request_deadline")


def with_request_deadline(seconds: float) -> type[HttpToolsProtocol]:
    """The uvicorn `http` protocol class with a `seconds` deadline for the request head."""

    class DeadlineHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._deadline = self.loop.call_later(seconds, self._deadline_passed)

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
