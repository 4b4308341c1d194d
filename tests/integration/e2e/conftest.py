"""Fixtures of the end-to-end tests: real gateway processes on loopback over real Redis.

`e2e_redis` is this package's own Redis server (nothing here flushes it: every session has
its own id, and consumers use fresh groups). `gateway` is one gateway process shared by the
package (replica id `replica-a`); tests that need other settings start their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from app.redis.embedded import EmbeddedRedis
from tests.integration.e2e.support import running_gateway
from tests.support.gateway_process import GatewayProcess


@pytest.fixture(scope="package")
def e2e_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(data_dir=tmp_path_factory.mktemp("e2e-redis")) as server:
        yield server


@pytest.fixture(scope="package")
def gateway(
    e2e_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    log_path = tmp_path_factory.mktemp("gateway-a") / "gateway.log"
    with running_gateway(e2e_redis.url, log_path, "replica-a") as process:
        yield process


@pytest.fixture
async def redis_conn(e2e_redis: EmbeddedRedis) -> AsyncIterator[redis.asyncio.Redis]:
    async with redis.asyncio.Redis.from_url(e2e_redis.url) as client:
        yield client
