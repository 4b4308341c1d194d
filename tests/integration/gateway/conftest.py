"""Fixtures for tests over the real gateway process (`audiohook-gateway serve`).

`gateway` is one gateway shared by the whole package (real uvicorn on 127.0.0.1, real Redis);
modules that need other settings start their own with `helpers.running_gateway`. Tests read
Redis through `gateway_redis` and never flush it: every session has its own id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from app.redis.embedded import EmbeddedRedis
from tests.integration.gateway.helpers import running_gateway
from tests.support.gateway_process import GatewayProcess


@pytest.fixture(scope="package")
def gateway(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with running_gateway(redis_server, tmp_path_factory.mktemp("gateway")) as process:
        yield process


@pytest.fixture
async def gateway_redis(redis_server: EmbeddedRedis) -> AsyncIterator[redis.asyncio.Redis]:
    async with redis.asyncio.Redis.from_url(redis_server.url) as client:
        yield client
