"""The nonce claim against a real redis-server: once per nonce, idempotent per attempt, and a
command retried across a Redis stall never turns the caller's own claim into a replay."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff

from app.redis import keys
from app.redis.embedded import EmbeddedRedis
from app.security.nonces import NonceCache, NonceStoreUnavailable
from tests.support.redis_servers import redis_stalled

NONCE = "stall-test-nonce-0123456789abcdef"
TIMEOUT = 1.0


async def test_a_claim_repeated_by_the_same_attempt_is_accepted(
    redis_client: redis.asyncio.Redis,
) -> None:
    cache = NonceCache(redis_client)
    now = time.time()
    assert await cache.claim_as("token-a", NONCE, now + 10, now) is True
    assert await cache.claim_as("token-a", NONCE, now + 10, now) is True  # a retried command
    assert await cache.claim_as("token-b", NONCE, now + 10, now) is False  # another request
    assert await cache.claim(NONCE, now + 10, now) is False
    assert await redis_client.get(keys.nonce_key(NONCE)) == b"token-a"
    assert 1 <= await redis_client.ttl(keys.nonce_key(NONCE)) <= 13


async def test_every_claim_uses_its_own_token(redis_client: redis.asyncio.Redis) -> None:
    cache = NonceCache(redis_client)
    now = time.time()
    assert await cache.claim(NONCE, now + 10, now) is True
    assert await cache.claim(NONCE, now + 10, now) is False


async def test_a_claim_retried_across_a_redis_stall_is_not_a_replay(
    own_redis: EmbeddedRedis,
) -> None:
    """The first SET times out in a stalled Redis and redis-py sends it again; when Redis
    resumes it runs both. The second copy must find this attempt's own claim."""
    client = redis.asyncio.Redis.from_url(
        own_redis.url,
        socket_timeout=TIMEOUT,
        retry=Retry(ConstantBackoff(0.05), retries=1),
    )
    try:
        cache = NonceCache(client)
        now = time.time()
        # Loads the script, so the stalled attempt is the claim itself.
        assert await cache.claim("warm-up-nonce-0123456789abcdef", now + 10, now) is True
        with redis_stalled(own_redis):
            claim = asyncio.create_task(cache.claim(NONCE, now + 10, now))
            # Past the first attempt's timeout, within the retry's: both copies are queued.
            await asyncio.sleep(TIMEOUT * 1.5)
            assert not claim.done()
        try:
            claimed = await claim
        except NonceStoreUnavailable:
            claimed = None
        assert claimed is not False, "the caller's own claim was answered as a replay"
        # Whatever the caller was told, Redis ran the claim and the nonce stays used.
        checker = redis.asyncio.Redis.from_url(own_redis.url)
        try:
            assert await checker.exists(keys.nonce_key(NONCE)) == 1
            assert await NonceCache(checker).claim(NONCE, now + 10, now) is False
        finally:
            await checker.aclose()
    finally:
        await client.aclose()
