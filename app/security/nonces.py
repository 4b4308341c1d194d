"""Replay protection: each signature nonce may be used once across all replicas.

A nonce is claimed in the shared Redis, so a signed upgrade replayed to another replica is
refused too. The key lives at least as long as the signature could still be accepted (plus a
margin for clock differences between replicas); after that the time checks reject the
signature anyway.

The claim is idempotent per attempt: it stores a random token that only this attempt knows,
and one script sets the key when absent or accepts it when it already holds that token. A
command retried after a timeout (Redis stalled, then resumed and ran both copies) therefore
finds its own claim, not a replay; another request with the same nonce holds another token.
"""

from __future__ import annotations

import math
import secrets

import redis.asyncio
import redis.exceptions

from app.redis import keys
from app.redis.client import RedisClient

# KEYS[1] nonce key; ARGV[1] this attempt's token, ARGV[2] TTL seconds.
# 1: claimed now or already claimed by this attempt; 0: claimed by someone else (a replay).
CLAIM_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  return 1
end
return 0
"""


class NonceStoreUnavailable(RuntimeError):
    """Redis could not be asked; the connection cannot be authenticated (answer HTTP 503)."""


class NonceCache:
    def __init__(self, client: RedisClient, *, margin_seconds: float = 3.0) -> None:
        self._client = client
        self._margin = margin_seconds
        self._script = client.register_script(CLAIM_SCRIPT)

    @staticmethod
    def new_token() -> str:
        """A token that only one attempt knows."""
        return secrets.token_hex(16)

    def ttl_seconds(self, expires_at: float, now: float) -> int:
        return max(1, math.ceil(expires_at - now + self._margin))

    async def claim(self, nonce: str, expires_at: float, now: float) -> bool:
        """True when the nonce was unused (now claimed); False when it is a replay."""
        return await self.claim_as(self.new_token(), nonce, expires_at, now)

    async def claim_as(self, token: str, nonce: str, expires_at: float, now: float) -> bool:
        """Claim for the attempt holding `token`; claiming again with the same token is
        accepted (that is what a retried command does)."""
        ttl = self.ttl_seconds(expires_at, now)
        try:
            claimed = await self._script(keys=[keys.nonce_key(nonce)], args=[token, ttl])
        except (redis.exceptions.RedisError, OSError) as exc:
            raise NonceStoreUnavailable("nonce store unavailable") from exc
        return bool(claimed == 1)
