"""Ordinary calls leave no ERROR line: the gateway's log is for what an operator must act on.

Run against the compiled build too (`.ci/compiled`): a compiled module once let an exception
being handled in one coroutine (the publisher's idle health check, whose `except` awaited a
ping after an `asyncio.timeout`) reach another, and every call that ended after an idle spell
logged "Exception in ASGI application" with a CancelledError, while the calls themselves
worked."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.redis.embedded import EmbeddedRedis
from tests.integration.gateway.helpers import running_gateway
from tests.support.raw_client import RawClient

# Longer than the publisher's idle health check (one ping a second while nothing is written).
IDLE_SECONDS = 2.5


async def test_calls_after_an_idle_spell_log_no_error(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    with running_gateway(redis_server, tmp_path) as gateway:
        for _ in range(2):
            await asyncio.sleep(IDLE_SECONDS)
            for _ in range(5):
                async with await RawClient.connect(gateway.ws_url) as client:
                    await client.open()
                    await client.send_audio(bytes(3200))
                    await client.close()
        records = gateway.log_records()
    assert sum(record.get("message") == "session closed" for record in records) == 10
    errors = [record for record in records if record.get("level") in {"ERROR", "CRITICAL"}]
    assert errors == []
