"""Checks made before a WebSocket upgrade is accepted, cheapest first.

Each refusal is an HTTP answer (the ASGI WebSocket denial-response extension), a metric and
a log line: 503 draining or not ready, 403 source address outside the allowlist, 429 too many
upgrades from one source, 400 a malformed session id, 503/429 session limits. Authentication
failures are answered after the upgrade with `disconnect` reason `unauthorized` (what the
Genesys connection probe shows an admin), or with HTTP 401 when configured so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket

from app.observability import metrics
from app.protocol.messages import is_uuid
from app.security.integrations import Integration
from app.security.nonces import NonceStoreUnavailable

if TYPE_CHECKING:
    from app.runtime import Gateway

log = logging.getLogger("app.transport.admission")


@dataclass(frozen=True, slots=True)
class Admission:
    """What the upgrade request established about a connection that may proceed."""

    session_id: str
    correlation_id: str
    organization_id: str | None
    client_address: str
    integration: Integration | None
    authenticated: bool
    failure_info: str | None  # set when authentication failed: sent after the minimum delay
    auth_reason: str


async def admit(websocket: WebSocket, gateway: Gateway, started_at: float) -> Admission | None:
    """Return the admission, or answer the request with an HTTP status and return None."""
    headers = websocket.headers
    peer = websocket.client.host if websocket.client else None
    address = gateway.allowlist.client_address(peer, headers.getlist("x-forwarded-for"))
    client_address = str(address) if address is not None else "unknown"
    fields = {
        "client_address": client_address,
        "session_id": headers.get("audiohook-session-id"),
        "correlation_id": headers.get("audiohook-correlation-id"),
    }

    async def refuse(status: int, cause: str, text: str) -> None:
        metrics.CONNECTIONS_REJECTED.labels(cause).inc()
        log.warning("upgrade refused", extra={**fields, "status": status, "cause": cause})
        await websocket.send_denial_response(PlainTextResponse(text, status_code=status))

    if gateway.draining:
        await refuse(503, "draining", "Server is shutting down")
        return None
    if not gateway.ready_for_sessions():
        await refuse(503, "not_ready", "Service unavailable")
        return None
    if not gateway.allowlist.allows(address):
        await refuse(403, "ip_not_allowed", "Forbidden")
        return None
    if not gateway.upgrade_limiter.allow(client_address):
        await refuse(429, "rate_limited", "Too many connection attempts")
        return None
    session_id = headers.get("audiohook-session-id", "")
    if not is_uuid(session_id):
        await refuse(400, "bad_request", "Audiohook-Session-Id must be a UUID")
        return None
    if gateway.at_session_limit():  # cheap early answer; admit_session() below decides
        await refuse(503, "session_limit", "Session limit reached")
        return None

    try:
        decision = await gateway.authenticator.authenticate(
            headers=websocket.scope["headers"],
            raw_path=websocket.scope.get("raw_path") or websocket.scope["path"].encode(),
            query_string=websocket.scope.get("query_string", b""),
            host=headers.get("host"),
            now=time.time(),
        )
    except NonceStoreUnavailable:
        await refuse(503, "not_ready", "Service unavailable")
        return None

    integration = decision.integration if decision.ok else None
    if not decision.ok:
        metrics.CONNECTIONS_REJECTED.labels(decision.metric_label).inc()
        log.warning(
            "authentication failed",
            extra={**fields, "outcome": str(decision.outcome), "reason": decision.reason},
        )
        if gateway.settings.auth_failure_response == "http_401":
            await _sleep_until(started_at + gateway.settings.auth_min_failure_delay_seconds)
            await websocket.send_denial_response(
                PlainTextResponse("Signature verification failed", status_code=401)
            )
            return None

    # Checked and counted with no await in between, so simultaneous upgrades cannot all slip
    # under a limit; the endpoint releases the slot when the connection ends.
    refusal = gateway.admit_session(integration)
    if refusal == "session_limit":
        await refuse(503, refusal, "Session limit reached")
        return None
    if refusal == "integration_limit":
        await refuse(429, refusal, "Integration session limit reached")
        return None

    return Admission(
        session_id=session_id,
        correlation_id=headers.get("audiohook-correlation-id", ""),
        organization_id=headers.get("audiohook-organization-id"),
        client_address=client_address,
        integration=integration,
        authenticated=decision.ok,
        failure_info=None if decision.ok else "Unauthorized",
        auth_reason=decision.reason,
    )


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
