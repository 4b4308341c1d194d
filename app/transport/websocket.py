"""The AudioHook WebSocket endpoint: admission (refused upgrades get their HTTP answer here),
then the accepted call's `Connection` (app/transport/connection.py) until the call ends."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket

from app.transport.admission import Refusal, admit
from app.transport.connection import Connection, wait_until
from app.transport.load_shedding import RETRY_AFTER_SECONDS, HandshakeCpu, LoadShedder

if TYPE_CHECKING:
    from app.transport.host import EndpointHost

RETRY_AFTER = {"Retry-After": str(RETRY_AFTER_SECONDS)}


async def audiohook_endpoint(websocket: WebSocket) -> None:
    gateway: EndpointHost = websocket.app.state.gateway
    connected_at = time.monotonic()
    shedder = gateway.load_shedder
    cpu = shedder.handshake_cpu(websocket.scope)
    cpu.start()
    shedder.handshake_started()
    try:
        admission = await admit(websocket, gateway, connected_at, cpu)
    finally:
        shedder.handshake_finished()
    if isinstance(admission, Refusal) or not admission.authenticated:
        # Charged to the CPU headroom, then refused after all (a replayed nonce, a limit, a
        # session-id conflict): the charge is given back at once.
        shedder.handshake_refused(cpu)
    if isinstance(admission, Refusal):
        cpu.stop()  # a refused upgrade's CPU is load like any other
        await wait_until(admission.not_before)  # a failed login: the minimum failure delay
        # 503s (overloaded, draining, not ready, session limit) are worth retrying soon,
        # on another replica if there is one.
        headers = RETRY_AFTER if admission.status == 503 else None
        await websocket.send_denial_response(
            PlainTextResponse(admission.text, status_code=admission.status, headers=headers)
        )
        return
    try:
        await accept(websocket, shedder, cpu)
        # Admission has read the upgrade's headers; a live call need not keep them.
        websocket.scope["headers"] = []
        connection = Connection(websocket, gateway, admission, connected_at)
        cpu.stop()
        if admission.authenticated:  # a failed login's CPU is load like a refusal's
            shedder.handshake_accepted(cpu)
        await connection.run()
    finally:
        gateway.release_session(admission.integration)
        if admission.authenticated:
            gateway.upgrade_claims.release(admission.session_id)


async def accept(websocket: WebSocket, shedder: LoadShedder, cpu: HandshakeCpu) -> None:
    """The upgrade's 101; a connection gone before it gives its headroom charge back."""
    try:
        await websocket.accept()
    except BaseException:
        shedder.handshake_refused(cpu)
        raise
