"""A session id belongs to the integration that first used it: another integration reusing
it (live or finished) is refused with HTTP 409, a metric and a log line, while the same
integration reconnecting with its own id is accepted as before."""

from __future__ import annotations

import redis.asyncio

from app.redis import keys
from tests.integration.gateway.helpers import (
    ROTATING_KEY,
    ROTATING_NEW_SECRET,
    wait_for_log,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import REJECTED, MetricDelta, metric_value
from tests.support.raw_client import RawClient

CONFLICT = "session_id_conflict"


async def test_another_integration_cannot_reuse_a_session_id(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    async with await RawClient.connect(gateway.ws_url) as first:
        await first.open()
        await first.send_audio(bytes(1600))
        await first.close()
    session_id = first.session_id
    assert await gateway_redis.get(keys.session_integration(session_id)) == b"test"
    assert await gateway_redis.ttl(keys.session_integration(session_id)) > 3600

    before = metric_value(gateway, REJECTED, cause=CONFLICT)
    answer = await RawClient.rejection(
        gateway.ws_url,
        api_key=ROTATING_KEY,
        client_secret=ROTATING_NEW_SECRET,
        session_id=session_id,
    )
    assert (answer.status, answer.body) == (409, "Session id belongs to another integration")
    assert metric_value(gateway, REJECTED, cause=CONFLICT) == before + 1
    record = await wait_for_log(
        gateway, lambda r: r.get("cause") == CONFLICT and r.get("session_id") == session_id
    )
    assert record["integration"] == "rotating"
    # The owner is unchanged: the first integration's stream stays its own.
    assert await gateway_redis.get(keys.session_integration(session_id)) == b"test"

    # The owning integration may reconnect with the same id.
    async with await RawClient.connect(gateway.ws_url, session_id=session_id) as again:
        await again.send_open()
        assert (await again.receive()).type in {"opened", "disconnect"}
    assert metric_value(gateway, REJECTED, cause=CONFLICT) == before + 1


async def test_the_id_of_a_live_session_is_refused_to_another_integration(
    gateway: GatewayProcess,
) -> None:
    async with await RawClient.connect(gateway.ws_url) as live:
        await live.open()
        answer = await RawClient.rejection(
            gateway.ws_url,
            api_key=ROTATING_KEY,
            client_secret=ROTATING_NEW_SECRET,
            session_id=live.session_id,
        )
        assert answer.status == 409
        await live.send("ping", {})
        await live.expect("pong")
        await live.close()


async def test_a_request_refused_for_the_session_id_has_spent_its_nonce(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    """The nonce is claimed before the session id (one Redis round trip decides both): the
    refused request sent again is a replay, answered `unauthorized`, not a second 409."""
    async with await RawClient.connect(gateway.ws_url) as first:
        await first.open()
        await first.close()
    conflicting = RawClient.request(
        gateway.ws_url,
        api_key=ROTATING_KEY,
        client_secret=ROTATING_NEW_SECRET,
        session_id=first.session_id,
    )
    assert (await RawClient.rejection(conflicting)).status == 409
    conflicts = MetricDelta(gateway, REJECTED, cause=CONFLICT)
    replays = MetricDelta(gateway, REJECTED, cause="replayed_nonce")
    async with await RawClient.connect(conflicting) as replay:
        await replay.send_open()
        await replay.expect_disconnect("unauthorized")
    assert (replays.delta(), conflicts.delta()) == (1, 0)
    assert await gateway_redis.get(keys.session_integration(first.session_id)) == b"test"
