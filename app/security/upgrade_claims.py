"""The two Redis claims of a verified upgrade: its signature's nonce, then its session id.

Each is decided in Redis (app/security/nonces.py, app/security/session_owners.py). On a single
Redis server both are one script, one round trip per accepted upgrade instead of two; it
decides exactly as the two claims made one after the other do: a nonce held by another
attempt is a replay and leaves the session's owner untouched; otherwise the nonce is claimed
(or found claimed by this attempt: a retried command) and then the session id, which another
integration may already own. On Redis Cluster the two keys live in different slots, so the
claims stay two commands, nonce first.

The script goes out on a connection of its own (app/redis/resp.py, as the publisher's writes
do) when one is idle: a command through redis-py's client (a pool checkout that probes the
socket, a task for its timed write) cost more than the round trip itself. Beyond
`CLAIM_CONNECTIONS` claims at once, the rest go through the client's pool as before.
"""

from __future__ import annotations

import enum
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from app.redis import keys
from app.redis.client import RedisClient
from app.redis.resp import PipelineConnection
from app.security.nonces import NonceCache, NonceStoreUnavailable
from app.security.session_owners import SessionOwners

# KEYS[1] nonce key, KEYS[2] session owner key; ARGV[1] this attempt's token, ARGV[2] the
# nonce's TTL, ARGV[3] integration name, ARGV[4] the owner's TTL.
# 1: both claimed; 0: the nonce belongs to another attempt (a replay), nothing written;
# 2: the nonce is claimed but another integration owns the session id.
CLAIM_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[3] then
  return 2
end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
return 1
"""


# Claims that may be in flight on connections of their own; more at once use the pool.
CLAIM_CONNECTIONS = 2
# Round-trip bound on those connections for a client made without a socket timeout.
DEFAULT_TIMEOUT_SECONDS = 5.0


class Claim(enum.Enum):
    CLAIMED = "claimed"
    REPLAYED_NONCE = "replayed_nonce"
    SESSION_ID_CONFLICT = "session_id_conflict"


class UpgradeClaims:
    def __init__(self, client: RedisClient, nonces: NonceCache, owners: SessionOwners) -> None:
        self._nonces = nonces
        self._owners = owners
        # Cross-slot scripts are refused by Redis Cluster: there the claims are two commands.
        self._script = (
            None if isinstance(client, RedisCluster) else client.register_script(CLAIM_SCRIPT)
        )
        self._idle: list[PipelineConnection] = []
        self._timeout = DEFAULT_TIMEOUT_SECONDS
        if isinstance(client, redis.asyncio.Redis):
            self._idle = [PipelineConnection(client) for _ in range(CLAIM_CONNECTIONS)]
            timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
            self._timeout = float(timeout or DEFAULT_TIMEOUT_SECONDS)

    async def close(self) -> None:
        """Close the claims' own connections (claims made later reopen them)."""
        for connection in self._idle:
            await connection.close()

    async def claim(
        self,
        session_id: str,
        integration: str,
        nonce: str | None,
        nonce_expires_at: float | None,
        now: float,
        *,
        token: str | None = None,
    ) -> Claim:
        """Claim `nonce` (None: an unsigned request, which has none) for this attempt, then
        `session_id` for `integration`. `token` identifies the attempt (default: a new random
        one); claiming again with the same token finds the attempt's own claims.

        Raises NonceStoreUnavailable when Redis cannot be asked."""
        if nonce is not None and nonce_expires_at is not None:
            token = token or NonceCache.new_token()
            if self._script is not None:
                return await self._claim_both(
                    token, nonce, nonce_expires_at, now, session_id, integration
                )
            if not await self._nonces.claim_as(token, nonce, nonce_expires_at, now):
                return Claim.REPLAYED_NONCE
        owned = await self._owners.claim(session_id, integration)
        return Claim.CLAIMED if owned else Claim.SESSION_ID_CONFLICT

    async def _claim_both(
        self,
        token: str,
        nonce: str,
        nonce_expires_at: float,
        now: float,
        session_id: str,
        integration: str,
    ) -> Claim:
        script = self._script
        assert script is not None
        script_keys = (keys.nonce_key(nonce), keys.session_integration(session_id))
        args = (
            token,
            self._nonces.ttl_seconds(nonce_expires_at, now),
            integration,
            self._owners.ttl_seconds,
        )
        try:
            if self._idle:
                answer = await self._run_on_own_connection(script_keys, args)
            else:
                answer = await script(keys=script_keys, args=args)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise NonceStoreUnavailable("nonce and session owner store unavailable") from exc
        if answer == 1:
            return Claim.CLAIMED
        if answer == 0:
            return Claim.REPLAYED_NONCE
        if answer == 2:
            return Claim.SESSION_ID_CONFLICT
        raise NonceStoreUnavailable(f"unexpected answer from the claim script: {answer!r}")

    async def _run_on_own_connection(
        self, script_keys: tuple[str, str], args: tuple[Any, ...]
    ) -> Any:
        """The script's answer, by EVALSHA on an idle connection of the claims' own (loading
        the script first if Redis does not have it). Raises as redis-py would."""
        script = self._script
        assert script is not None
        connection = self._idle.pop()
        try:
            for _ in range(2):
                command = ("EVALSHA", script.sha, len(script_keys), *script_keys, *args)
                (answer,) = await connection.execute([command], self._timeout)
                if not isinstance(answer, redis.exceptions.NoScriptError):
                    break
                await script.registered_client.script_load(script.script)  # a restarted Redis
            if isinstance(answer, redis.exceptions.ResponseError):
                raise answer
            return answer
        except BaseException:
            # Cancelled or failed mid round trip: its reply may still come, and would be read
            # as the next claim's answer. The next claim on it connects afresh.
            await connection.close()
            raise
        finally:
            self._idle.append(connection)
