"""A stalled Redis (SIGSTOP: connections stay open, nothing is answered) through the real
gateway: readiness follows within a couple of seconds, genuine signed upgrades made during
the stall are never answered as replays, and calls work again once Redis resumes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import redis.asyncio
from websockets.exceptions import InvalidStatus

from app.redis.embedded import EmbeddedRedis
from tests.integration.gateway.helpers import BackgroundCall, running_gateway
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import metric_value
from tests.support.raw_client import RawClient
from tests.support.redis_servers import redis_stalled

# Short enough that an upgrade caught in the stall has its claim retried by redis-py
# (first attempt times out, the retry is queued) before Redis resumes.
REDIS_TIMEOUT = 1.5
SETTINGS = {"REDIS_TIMEOUT_SECONDS": str(REDIS_TIMEOUT), "REDIS_HEALTH_CHECK_SECONDS": "0.5"}
READINESS_BOUND = 2.5  # the health check's interval + timeout, with slack for a busy machine


async def readyz(gateway: GatewayProcess) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"{gateway.metrics_url}/readyz")).status_code


async def signed_upgrade(gateway: GatewayProcess) -> str:
    """`opened`, `unauthorized`, or the HTTP status that refused the upgrade."""
    try:
        client = await RawClient.connect(gateway.ws_url, timeout=30)
    except InvalidStatus as exc:
        return str(exc.response.status_code)
    async with client:
        await client.send_open()
        message = await client.receive(timeout=30)
        if message.type == "disconnect":
            return str(message.reason)
        assert message.type == "opened", message
        await client.close()
        return "opened"


async def test_readiness_follows_a_stalled_redis_and_no_caller_is_a_replay(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    with running_gateway(own_redis, tmp_path, settings=SETTINGS) as gateway:
        assert await signed_upgrade(gateway) == "opened"
        assert await readyz(gateway) == 200
        # A live call keeps the publisher writing, so readiness cannot come from its idle ping.
        call = await BackgroundCall(gateway.ws_url).start()
        with redis_stalled(own_redis):
            stalled_at = time.monotonic()
            # Upgrades made as the stall begins: these reach the nonce claim and wait in it.
            caught = [asyncio.create_task(signed_upgrade(gateway)) for _ in range(3)]
            while await readyz(gateway) != 503:
                assert time.monotonic() - stalled_at < READINESS_BOUND, "/readyz stayed ready"
                await asyncio.sleep(0.1)
            # Once not ready, upgrades are refused at once, before any Redis work.
            assert await signed_upgrade(gateway) == "503"
            # Past the first attempt's timeout: redis-py has queued its retry of the claim.
            await asyncio.sleep(max(0.0, stalled_at + REDIS_TIMEOUT * 1.3 - time.monotonic()))
        outcomes = await asyncio.gather(*caught)
        assert set(outcomes) <= {"opened", "503"}, outcomes
        assert (
            metric_value(gateway, "audiohook_connections_rejected_total", cause="replayed_nonce")
            == 0
        )
        # Redis resumed: ready again and calls work.
        for _ in range(100):
            if await readyz(gateway) == 200:
                break
            await asyncio.sleep(0.1)
        assert await readyz(gateway) == 200
        # Nothing may keep refusing calls once Redis is back (a refusal says which signal).
        assert await signed_upgrade(gateway) == "opened", gateway.log_tail(5)
        assert metric_value(gateway, "audiohook_redis_up") == 1
        redis_client = redis.asyncio.Redis.from_url(own_redis.url)
        try:
            await call.finish(redis_client)  # every frame of the call survived the stall
        finally:
            await redis_client.aclose()


async def test_the_backlog_shows_in_the_metrics_while_a_stall_holds_the_round_trips(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    """Round trips wait out a stall up to the Redis timeout (10 s here); the metrics must not:
    the gateway brings the publisher's up to date every second."""
    settings = {"REDIS_TIMEOUT_SECONDS": "10", "REDIS_HEALTH_CHECK_SECONDS": "0.5"}
    with running_gateway(own_redis, tmp_path, settings=settings) as gateway:
        call = await BackgroundCall(gateway.ws_url).start()
        with redis_stalled(own_redis):
            stalled_at = time.monotonic()
            while metric_value(gateway, "audiohook_publish_backlog_frames") == 0:
                assert time.monotonic() - stalled_at < 5, "the backlog gauge stayed at 0"
                await asyncio.sleep(0.1)
        redis_client = redis.asyncio.Redis.from_url(own_redis.url)
        try:
            await call.finish(redis_client)  # every frame of the call survived the stall
        finally:
            await redis_client.aclose()
