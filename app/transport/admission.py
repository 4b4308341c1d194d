"""Checks made before a WebSocket upgrade is accepted, cheapest first.

`admit()` decides; the endpoint sends the answer. Each refusal is an HTTP status (the ASGI
WebSocket denial-response extension), a metric and a log line: 503 draining or not ready, 403
source address outside the allowlist, 429 too many upgrades from one source, 400 an identity
header sent twice or a malformed session id, 409 a session id used by another integration,
503/429 session limits. Authentication failures are answered after the upgrade with
`disconnect` reason `unauthorized` (what the Genesys connection probe shows an admin), or with
HTTP 401 when configured so or when max_pending_auth_failures are already pending; they never
hold a session slot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.websockets import WebSocket

from app.observability import metrics
from app.observability.logging import UPGRADE_REFUSED, refusal_log
from app.protocol.messages import NULL_UUID, is_uuid
from app.security.authenticator import REPLAYED
from app.security.integrations import Integration
from app.security.nonces import NonceStoreUnavailable
from app.security.upgrade_claims import Claim
from app.transport.load_shedding import OVERLOADED_TEXT, HandshakeCpu

if TYPE_CHECKING:
    from app.transport.host import AdmissionHost

log = logging.getLogger("app.transport.admission")
# Refusals and failed logins are one line per connection, and connections are the client's to
# open: a burst, then a line a second per cause, the rest counted.
_refusal_log = refusal_log(log)

# Headers that identify the caller, the session or the signature: each must appear at most
# once (a second copy could be read by one check and not another).
SINGLE_VALUE_HEADERS = frozenset(
    {
        b"host",
        b"audiohook-session-id",
        b"audiohook-organization-id",
        b"audiohook-correlation-id",
        b"x-api-key",
        b"signature",
        b"signature-input",
    }
)


def duplicated_header(raw_headers: list[tuple[bytes, bytes]]) -> str | None:
    """The first identity header present more than once, if any (ASGI names are lower-case)."""
    seen: set[bytes] = set()
    for name, _ in raw_headers:
        if name in SINGLE_VALUE_HEADERS:
            if name in seen:
                return name.decode("latin-1")
            seen.add(name)
    return None


@dataclass(frozen=True, slots=True)
class Admission:
    """What the upgrade request established about a connection that may proceed."""

    session_id: str
    correlation_id: str
    organization_id: str | None
    client_address: str
    integration: Integration | None
    authenticated: bool
    # The earliest an authentication failure may be answered: the upgrade's start plus the
    # minimum failure delay. A failed verification is told `unauthorized` then, and a failure
    # found later (the organization checks at `open`) is sent no sooner.
    failure_not_before: float


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer instead of the upgrade; sent by the endpoint no sooner than `not_before`."""

    status: int
    text: str
    not_before: float = 0.0

    def __post_init__(self) -> None:
        UPGRADE_REFUSED.set(True)  # in the connection's task: a refusal is not an ASGI error


async def admit(
    websocket: WebSocket, gateway: AdmissionHost, started_at: float, cpu: HandshakeCpu
) -> Admission | Refusal:
    """Decide on an upgrade request. Every refusal is counted and logged here; the endpoint
    sends it. Failed authentication is admitted (unauthenticated) unless configured for 401.
    `cpu` is counting this upgrade's CPU: not while it awaits Redis."""
    # Not `websocket.headers`: that one is cached on the WebSocket for the life of the call.
    headers = Headers(scope=websocket.scope)
    peer = websocket.client.host if websocket.client else None
    address = gateway.allowlist.client_address(peer, headers.getlist("x-forwarded-for"))
    client_address = str(address) if address is not None else "unknown"
    session_id = headers.get("audiohook-session-id", "")
    fields = {
        "client_address": client_address,
        "session_id": session_id,
        "correlation_id": headers.get("audiohook-correlation-id"),
    }

    # Every answer to a failed login waits until then: the HTTP 401 and the `disconnect`.
    failure_not_before = started_at + gateway.settings.auth_min_failure_delay_seconds

    def admission(integration: Integration | None) -> Admission:
        """Authenticated (with its integration) or not (None: answered `unauthorized`)."""
        return Admission(
            session_id=session_id,
            correlation_id=headers.get("audiohook-correlation-id", ""),
            organization_id=headers.get("audiohook-organization-id"),
            client_address=client_address,
            integration=integration,
            authenticated=integration is not None,
            failure_not_before=failure_not_before,
        )

    def refuse(status: int, cause: str, text: str) -> Refusal:
        metrics.CONNECTIONS_REJECTED.labels(cause).inc()
        _refusal_log.log(
            logging.WARNING, cause, "upgrade refused", {**fields, "status": status, "cause": cause}
        )
        return Refusal(status, text)

    if gateway.draining:
        return refuse(503, "draining", "Server is shutting down")
    if not gateway.ready_for_sessions():
        return refuse(503, "not_ready", "Service unavailable")
    shedder = gateway.load_shedder
    connected_at = shedder.connected_at(websocket.scope)
    if connected_at is not None:
        metrics.HANDSHAKE_QUEUE_SECONDS.observe(time.monotonic() - connected_at)
    if shedder.shed(websocket.scope["headers"], connected_at):  # counted and logged there
        return Refusal(503, OVERLOADED_TEXT)
    if not gateway.allowlist.allows(address):
        return refuse(403, "ip_not_allowed", "Forbidden")
    if not gateway.upgrade_limiter.allow(address):
        return refuse(429, "rate_limited", "Too many connection attempts")
    duplicate = duplicated_header(websocket.scope["headers"])
    if duplicate is not None:
        fields["header"] = duplicate
        return refuse(400, "duplicate_header", f"Duplicate {duplicate} header")
    # The null UUID is refused too: the protocol would let the client's `open` pick the
    # session id, which is not covered by the signature.
    if not is_uuid(session_id) or session_id == NULL_UUID:
        return refuse(400, "bad_request", "Audiohook-Session-Id must be a UUID")
    if gateway.at_session_limit():  # cheap early answer; admit_session() below decides
        return refuse(503, "session_limit", "Session limit reached")

    now = time.time()
    decision = gateway.authenticator.verify(
        headers=websocket.scope["headers"],
        raw_path=websocket.scope.get("raw_path") or websocket.scope["path"].encode(),
        query_string=websocket.scope.get("query_string", b""),
        host=headers.get("host"),
        now=now,
    )
    integration = decision.integration
    if decision.ok:
        assert integration is not None  # an accepted request always names its integration
        # Charged in the same stretch of code as shed() above: no await lets another upgrade
        # in between (a limit's CPU headroom, app/transport/load_shedding.py).
        shedder.handshake_authenticated(cpu)
        # The nonce, then the session id: one Redis round trip (app/security/upgrade_claims.py).
        # Other connections' work runs meanwhile: it is not this upgrade's CPU.
        cpu.stop()
        try:
            claim = await gateway.upgrade_claims.claim(
                session_id, integration.name, decision.nonce, decision.nonce_expires_at, now
            )
        except NonceStoreUnavailable:
            return refuse(503, "not_ready", "Service unavailable")
        finally:
            cpu.start()
        if claim is Claim.REPLAYED_NONCE:
            decision = REPLAYED
        elif claim is Claim.SESSION_ID_CONFLICT:
            fields["integration"] = integration.name
            return refuse(409, "session_id_conflict", "Session id belongs to another integration")

    if not decision.ok:
        # A failure never takes a session slot: it is answered `disconnect` unauthorized under
        # its own bound, or HTTP 401 when so configured or past that bound. Either answer
        # waits for the minimum failure delay, so its timing tells nothing about which check
        # failed (the bound is not a reason to answer faster: the wait costs a sleeping
        # coroutine, not a slot, and the per-source rate limit bounds how many there are).
        metrics.CONNECTIONS_REJECTED.labels(decision.metric_label).inc()
        disconnect = gateway.settings.auth_failure_response == "disconnect"
        admitted = disconnect and gateway.admit_auth_failure()
        _refusal_log.log(
            logging.WARNING,
            decision.metric_label,
            "authentication failed",
            {
                **fields,
                "outcome": str(decision.outcome),
                "reason": decision.reason,
                "answer": "disconnect" if admitted else "http_401",
            },
        )
        if not admitted:
            return Refusal(401, "Signature verification failed", failure_not_before)
        return admission(None)

    assert integration is not None
    # Checked and counted with no await in between, so simultaneous upgrades cannot all slip
    # under a limit; the endpoint releases the slot (and the claim) when the connection ends.
    limit_reached = gateway.admit_session(integration)
    if limit_reached is not None:
        gateway.upgrade_claims.release(session_id)
    if limit_reached == "session_limit":
        return refuse(503, limit_reached, "Session limit reached")
    if limit_reached == "integration_limit":
        return refuse(429, limit_reached, "Integration session limit reached")
    return admission(integration)
