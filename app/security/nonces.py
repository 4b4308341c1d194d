"""Replay protection: each signature nonce may be used once across all replicas.

A nonce is claimed with `SET key 1 NX EX ttl` in the shared Redis, so a signed upgrade
replayed to another replica is refused too. The key lives at least as long as the signature
could still be accepted (plus a margin for clock differences between replicas); after that the
time checks reject the signature anyway.
"""

from __future__ import annotations

import math

import redis.asyncio
import redis.exceptions

from app.streams import keys
from app.streams.redis_client import RedisClient


class NonceStoreUnavailable(RuntimeError):
    """Redis could not be asked; the connection cannot be authenticated (answer HTTP 503)."""


class NonceCache:
    def __init__(self, client: RedisClient, *, margin_seconds: float = 3.0) -> None:
        self._client = client
        self._margin = margin_seconds

    def ttl_seconds(self, expires_at: float, now: float) -> int:
        return max(1, math.ceil(expires_at - now + self._margin))

    async def claim(self, nonce: str, expires_at: float, now: float) -> bool:
        """True when the nonce was unused (now claimed); False when it is a replay."""
        try:
            created = await self._client.set(
                keys.nonce_key(nonce), b"1", nx=True, ex=self.ttl_seconds(expires_at, now)
            )
        except (redis.exceptions.RedisError, OSError) as exc:
            raise NonceStoreUnavailable("nonce store unavailable") from exc
        return bool(created)
