"""Redis clients from settings: standalone by URL, or Redis Cluster when `redis_cluster` is set.

With no `redis_url` the gateway runs an embedded redis-server on loopback
(app/redis/embedded.py); production deployments point `redis_url` at their own Redis.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeAlias

import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from app.config import Settings


RedisClient: TypeAlias = "redis.asyncio.Redis | RedisCluster"


# One quick retry covers a pooled connection that died with a restarted server; longer
# outages are the callers' business (the publisher keeps a backlog, control loops back off).
# The pipelined round trips (app/redis/resp.py) retry by the same policy.
RETRIES = 1


def retry_backoff() -> ExponentialBackoff:
    # Stateless (the pause depends on the failure count only): nothing to reset between calls.
    return ExponentialBackoff(cap=0.2, base=0.02)


def _retry() -> Retry:
    return Retry(retry_backoff(), retries=RETRIES)


def create_redis(settings: Settings, url: str | None = None) -> RedisClient:
    """A client for `url` (default settings.redis_url), cluster-aware when configured."""
    url = url or settings.redis_url
    if not url:
        raise ValueError("no Redis URL: set redis_url or start the embedded server first")
    timeout = settings.redis_timeout_seconds
    if settings.redis_cluster:
        return RedisCluster.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=_retry(),
        )
    # A blocking pool: a burst of upgrades (each claims a nonce) waits briefly for a free
    # connection instead of failing with "Too many connections" (redis-py's default pool
    # raises past 100).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=_retry(),
        health_check_interval=30,
    )
    return redis.asyncio.Redis.from_pool(pool)


def blocking_read_seconds(timeout_seconds: float) -> float:
    """How long a blocking read (XREAD BLOCK, BLPOP) may wait on a client whose socket timeout
    is `timeout_seconds`: the answer must arrive well before the socket gives up."""
    return min(1.0, timeout_seconds / 2)


async def ping(client: RedisClient, timeout_seconds: float = 1.0) -> bool:
    """True when Redis answers PING within `timeout_seconds` (never raises)."""
    try:
        async with asyncio.timeout(timeout_seconds):
            return bool(await client.ping())
    except (RedisError, OSError, TimeoutError):
        return False


async def close_redis(client: RedisClient) -> None:
    await client.aclose()
