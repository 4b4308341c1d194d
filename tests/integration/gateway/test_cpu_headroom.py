"""Under a CPU limit whose stall is long, the upgrades of one monitor interval may take only the
CPU headroom it leaves: a burst of simultaneous calls gets what that pays for, the rest 503
with Retry-After; failed logins spend none of it, and an upgrade refused after its charge (a
replayed nonce) gives it back. A gateway in the test's own process (real uvicorn on
127.0.0.1, real Redis and WebSocket clients) under a limit it is told of, its load monitor
held still so that the headroom stays the one it started with."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
import redis.asyncio
from prometheus_client import REGISTRY
from websockets.exceptions import InvalidStatus

from app import runtime
from app.client.upgrade import Endpoint
from app.cpu_limit import CpuLimit
from app.redis import keys
from app.runtime import Gateway
from app.transport.load_shedding import FIRST_HANDSHAKE_COST_SECONDS, HEADROOM
from tests.integration.gateway.helpers import gateway_in_this_process, secret
from tests.support.raw_client import RawClient, fresh_nonce, new_id

# 0.8 of 0.04 core over a 50 ms interval: 1.6 ms, less than one upgrade's first charge.
CAPACITY = 0.04
BURST = 6


def hold_the_monitor(gateway: Gateway) -> None:
    """At 0.5 of its limit (past half the bound, 0.8, where the headroom is asked for), and
    no interval ends: no headroom comes."""
    gateway.load_shedder.cpu = 0.5
    gateway.load_shedder.interval = 3600.0


async def upgrade(uri: str) -> tuple[int, str | None]:
    """The upgrade's HTTP status and Retry-After (101 and None when accepted)."""
    try:
        client = await RawClient.connect(uri)
    except InvalidStatus as refused:
        return refused.response.status_code, refused.response.headers.get("Retry-After")
    await client.aclose()
    return 101, None


async def replayed_then_gone(uri: str, nonce: str) -> None:
    """A signed upgrade with a used nonce whose client leaves before the answer, then waits
    until admission has refused it."""
    endpoint = Endpoint.parse(uri)
    request = RawClient.request(uri, nonce=nonce)
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET {endpoint.request_target} HTTP/1.1\r\nHost: {endpoint.authority}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
        + "\r\n"
    )
    replays = (
        REGISTRY.get_sample_value(
            "audiohook_connections_rejected_total", {"cause": "replayed_nonce"}
        )
        or 0.0
    )
    _, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    writer.write(head.encode())
    writer.close()  # gone before the answer
    async with asyncio.timeout(5):
        while (
            REGISTRY.get_sample_value(
                "audiohook_connections_rejected_total", {"cause": "replayed_nonce"}
            )
            or 0.0
        ) == replays:
            await asyncio.sleep(0.01)


def shed_for_headroom() -> float:
    return REGISTRY.get_sample_value("audiohook_load_shed_total", {"signal": HEADROOM}) or 0.0


async def test_a_burst_gets_the_headroom_it_finds_and_failed_logins_spend_none(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "worker_cpu_limit", lambda: CpuLimit(CAPACITY, long_stall=True))
    assert 0 < 0.8 * CAPACITY * 0.05 < FIRST_HANDSHAKE_COST_SECONDS
    async with gateway_in_this_process(redis_url, hold_the_monitor) as (gateway, uri):
        assert gateway.load_shedder.long_stall
        for _ in range(3):  # the right key, the wrong secret: answered `disconnect`, unsigned in
            failed = await RawClient.connect(uri, client_secret=secret("wrong"))
            await failed.aclose()
        shed_before = shed_for_headroom()
        answers = await asyncio.gather(*(upgrade(uri) for _ in range(BURST)))
    assert answers.count((101, None)) == 1
    assert answers.count((503, "1")) == BURST - 1
    assert shed_for_headroom() == shed_before + BURST - 1


async def test_an_upgrade_refused_after_its_charge_gives_it_back(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "worker_cpu_limit", lambda: CpuLimit(CAPACITY, long_stall=True))
    nonce, session_id = fresh_nonce(), new_id()
    async with redis.asyncio.Redis.from_url(redis_url) as client:  # as if others had them
        await client.set(keys.nonce_key(nonce), "another-attempt", ex=300)
        await client.set(keys.session_integration(session_id), "another-integration", ex=300)
    async with gateway_in_this_process(redis_url, hold_the_monitor) as (_, uri):
        # Each signed right, so charged more than the headroom holds; then the claim finds its
        # nonce used (answered `disconnect`) or its session id another integration's (409),
        # and the charge is given back.
        replayed = await RawClient.connect(uri, nonce=nonce)
        await replayed.aclose()
        assert (await RawClient.rejection(uri, session_id=session_id)).status == 409
        await replayed_then_gone(uri, nonce)  # given back before its accept could fail
        assert await upgrade(uri) == (101, None)
        assert await upgrade(uri) == (503, "1")  # an accepted call keeps its charge
