"""Shared fixtures: real redis-server processes on 127.0.0.1 (no fakes).

- `redis_server`: one server for the whole test session (EmbeddedRedis).
- `redis_url`: its URL, after FLUSHALL, so each test starts from an empty database.
- `redis_client`: an async redis-py client on `redis_url`, closed after the test.
- `own_redis`: a private, append-only server for tests that stop and restart Redis;
  use `tests.support.redis_servers.redis_outage(own_redis)` to take it down for a while.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from app.redis.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    if not redis_server.running:  # a test that stopped it must not break the next ones
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(data_dir=tmp_path / "redis", appendonly=True) as server:
        yield server
