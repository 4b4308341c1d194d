"""Failed authentications never take session slots: they are held (answered `disconnect`
unauthorized after the minimum delay) under a bound of their own, and past that bound get
HTTP 401 no sooner than the same delay. Real calls keep their slots during a failed-login
flood."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.redis.embedded import EmbeddedRedis
from tests.integration.gateway.helpers import AUTH_MIN_FAILURE_DELAY, running_gateway, secret
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import REJECTED, metric_value
from tests.support.raw_client import RawClient

PENDING = "audiohook_auth_failures_pending"
OVER_LIMIT = "audiohook_auth_failures_over_limit_total"
MAX_SESSIONS = 2
MAX_PENDING = 3
SETTINGS = {"MAX_SESSIONS": str(MAX_SESSIONS), "MAX_PENDING_AUTH_FAILURES": str(MAX_PENDING)}


async def failed_login(gateway: GatewayProcess) -> RawClient:
    """A connection signed with the wrong secret that stays open and never reads."""
    return await RawClient.connect(gateway.ws_url, client_secret=secret("wrong"))


async def test_failed_logins_hold_no_session_slot_and_are_bounded(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    with running_gateway(redis_server, tmp_path, settings=SETTINGS) as gateway:
        # More failed logins than there are session slots, all held open at once.
        bad = [await failed_login(gateway) for _ in range(MAX_PENDING)]
        try:
            assert metric_value(gateway, PENDING) == MAX_PENDING
            # Past the bound a failure is answered HTTP 401, still no sooner than the delay.
            over = await RawClient.rejection(gateway.ws_url, client_secret=secret("wrong"))
            assert over.status == 401
            assert over.seconds >= AUTH_MIN_FAILURE_DELAY
            assert metric_value(gateway, OVER_LIMIT) == 1
            assert metric_value(gateway, REJECTED, cause="auth_failed") == MAX_PENDING + 1
            # Every session slot is still free for real calls.
            good = [await RawClient.connect(gateway.ws_url) for _ in range(MAX_SESSIONS)]
            for client in good:
                await client.open()
            # The held failures are still told `disconnect` unauthorized.
            for client in bad:
                await client.expect_disconnect("unauthorized")
            for client in good:
                await client.close()
                await client.aclose()
        finally:
            for client in bad:
                await client.aclose()
        # Released when they go: failed logins are answered `disconnect` again.
        for _ in range(100):
            if metric_value(gateway, PENDING) == 0:
                break
            await asyncio.sleep(0.05)
        assert metric_value(gateway, PENDING) == 0
        async with await failed_login(gateway) as again:
            await again.send_open()
            await again.expect_disconnect("unauthorized")
        assert metric_value(gateway, OVER_LIMIT) == 1
