"""A cheap, bounded Redis health check that readiness follows within about two seconds.

Writes and nonce claims wait up to `redis_timeout_seconds` (plus a retry) before they fail,
so a stalled Redis (host frozen, network black hole) would keep the replica ready for that
long. This check sends one PING per interval on a connection of its own, never queued behind
the publisher's batches, and gives up after `redis_health_check_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.redis.client import RedisClient, ping

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger("app.streams.redis_health")


def health_client(settings: Settings) -> RedisClient:
    """One connection, short timeouts and no retry: an unanswered PING is the answer."""
    url = settings.redis_url
    if not url:
        raise ValueError("no Redis URL")
    timeout = settings.redis_health_check_seconds
    if settings.redis_cluster:
        return RedisCluster.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
    )


class RedisHealthCheck:
    def __init__(self, settings: Settings, report: Callable[[bool], None]) -> None:
        self._settings = settings
        self._report = report
        self._interval = settings.redis_health_check_seconds

    async def run(self) -> None:
        """PING every interval until cancelled; `report` gets each outcome."""
        client = health_client(self._settings)
        try:
            while True:
                self._report(await ping(client, self._interval))
                await asyncio.sleep(self._interval)
        finally:
            await client.aclose()
