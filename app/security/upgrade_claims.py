"""The two Redis claims of a verified upgrade: its signature's nonce, then its session id.

Each is decided in Redis (app/security/nonces.py, app/security/session_owners.py). On a single
Redis server both are one script, one round trip per accepted upgrade instead of two; it
decides exactly as the two claims made one after the other do: a nonce held by another
attempt is a replay and leaves the session's owner untouched; otherwise the nonce is claimed
(or found claimed by this attempt: a retried command) and then the session id, which another
integration may already own. On Redis Cluster the two keys live in different slots, so the
claims stay two commands, nonce first.

The script also writes the session's control registry entry (app/control/plane.py), naming
this replica, when the session id has none: the control plane would otherwise write it in a
round trip of its own when the session opens. An entry already there (the same session id live
on another replica, or an earlier connection's) is left for the plane to overwrite at `open`,
as before. The plane deletes the entry if the connection ends without registering the
session (`release`). One it never learnt of (the claim's answer lost to a timeout or a
cancelled upgrade) or a gateway that dies leaves the entry to expire; a command routed by it
meanwhile is answered `unknown_session`, as for a session that ended. The plane trusts the
entry at `open` without reading it back, so one lost in between (Redis flushed or failed over
without persistence, or a duplicate of the session id on another replica that ended and
deleted it) is written again by the next refresh, within a third of its TTL.

The script goes out on a connection of its own (app/redis/resp.py, as the publisher's writes
do): a command through redis-py's client (a pool checkout that probes the socket, a task for
its timed write) cost more than the round trip itself. A claim made while every such
connection has a round trip out waits for the first to come back, which then carries the
claims that waited, in pipelined round trips of their own. (They used to go through the
client's pool: in a burst of upgrades each one beyond the pool's size opened a connection,
one after another, and the whole burst waited 0.1 s and more for them.)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from functools import partial
from typing import Any, Protocol

import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from app.redis import keys
from app.redis.client import RedisClient
from app.redis.resp import PipelineConnection
from app.security.nonces import NonceCache, NonceStoreUnavailable
from app.security.session_owners import SessionOwners
from app.tasks import stop_task

# KEYS[1] nonce key, KEYS[2] session owner key, KEYS[3] the session's control registry entry;
# ARGV[1] this attempt's token, ARGV[2] the nonce's TTL, ARGV[3] integration name, ARGV[4] the
# owner's TTL, ARGV[5] this replica's id, ARGV[6] the registry entry's TTL in ms.
# 1: both claimed; 3: both claimed, and the registry entry names this replica: written now, or
# found by this attempt's retry (its first run may have written it); 0: the nonce belongs to
# another attempt (a replay), nothing written; 2: the nonce is claimed but another integration
# owns the session id.
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
if redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[6], 'NX') then
  return 3
end
if holder and redis.call('GET', KEYS[3]) == ARGV[5] then
  return 3
end
return 1
"""


class ControlRegistry(Protocol):
    """The control plane's registry of live sessions (app/control/plane.py), as the claims
    see it: an entry the claim wrote is noted, and released if its session never registers."""

    @property
    def replica_id(self) -> str: ...

    @property
    def entry_ttl_ms(self) -> int: ...

    def routed_at_claim(self, session_id: str) -> None: ...

    def release(self, session_id: str) -> None: ...


# Connections of the claims' own: round trips out at once.
CLAIM_CONNECTIONS = 2
# The most claims one round trip carries; more wait for the next.
CLAIMS_PER_ROUND_TRIP = 64
# A claim waiting for a round trip: its EVALSHA, and where its answer goes.
_Waiting = tuple[tuple[Any, ...], "asyncio.Future[Any]"]
# Round-trip bound on those connections for a client made without a socket timeout.
DEFAULT_TIMEOUT_SECONDS = 5.0


class Claim(enum.Enum):
    CLAIMED = "claimed"
    REPLAYED_NONCE = "replayed_nonce"
    SESSION_ID_CONFLICT = "session_id_conflict"


class UpgradeClaims:
    def __init__(
        self,
        client: RedisClient,
        nonces: NonceCache,
        owners: SessionOwners,
        registry: ControlRegistry,
    ) -> None:
        self._nonces = nonces
        self._owners = owners
        self._registry = registry
        # Cross-slot scripts are refused by Redis Cluster: there the claims are two commands.
        self._script = (
            None if isinstance(client, RedisCluster) else client.register_script(CLAIM_SCRIPT)
        )
        self._idle: list[PipelineConnection] = []
        self._waiting: list[_Waiting] = []  # claims for the next round trip, in order
        self._round_trips: set[asyncio.Task[None]] = set()
        self._timeout = DEFAULT_TIMEOUT_SECONDS
        if isinstance(client, redis.asyncio.Redis):
            self._idle = [PipelineConnection(client) for _ in range(CLAIM_CONNECTIONS)]
            timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
            self._timeout = float(timeout or DEFAULT_TIMEOUT_SECONDS)

    async def close(self) -> None:
        """Fail the claims still waiting, stop the round trips carrying waiting claims, and
        close the claims' own idle connections (claims made later reopen them)."""
        _fail(self._waiting, redis.exceptions.ConnectionError("upgrade claims closed"))
        self._waiting = []
        while running := [task for task in self._round_trips if not task.done()]:
            for task in running:
                await stop_task(task)
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

        Raises NonceStoreUnavailable when Redis cannot be asked. After a claim, call
        `release(session_id)` when the connection ends (or is refused after all)."""
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

    def release(self, session_id: str) -> None:
        """The connection that claimed `session_id` ended, or was refused after its claim."""
        self._registry.release(session_id)

    async def _claim_both(
        self,
        token: str,
        nonce: str,
        nonce_expires_at: float,
        now: float,
        session_id: str,
        integration: str,
    ) -> Claim:
        registry = self._registry
        script_keys = (
            keys.nonce_key(nonce),
            keys.session_integration(session_id),
            keys.session_owner(session_id),
        )
        args = (
            token,
            self._nonces.ttl_seconds(nonce_expires_at, now),
            integration,
            self._owners.ttl_seconds,
            registry.replica_id,
            registry.entry_ttl_ms,
        )
        try:  # a single server (the only one with the script): on the claims' own connections
            answer = await self._run_on_own_connection(script_keys, args)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise NonceStoreUnavailable("nonce and session owner store unavailable") from exc
        if answer == 3:
            registry.routed_at_claim(session_id)
            return Claim.CLAIMED
        if answer == 1:
            return Claim.CLAIMED
        if answer == 0:
            return Claim.REPLAYED_NONCE
        if answer == 2:
            return Claim.SESSION_ID_CONFLICT
        raise NonceStoreUnavailable(f"unexpected answer from the claim script: {answer!r}")

    async def _run_on_own_connection(
        self, script_keys: tuple[str, ...], args: tuple[Any, ...]
    ) -> Any:
        """The script's answer, by EVALSHA on a connection of the claims' own: on an idle one
        at once, else with the claims that wait for one to come back. Raises as redis-py
        would."""
        script = self._script
        assert script is not None
        command = ("EVALSHA", script.sha, len(script_keys), *script_keys, *args)
        if not self._idle:
            answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiting.append((command, answer))
            return await answer  # a caller cancelled meanwhile is skipped (never sent)
        connection = self._idle.pop()
        try:
            (reply,) = await self._answers(connection, [command])
        except BaseException:
            # Cancelled or failed mid round trip: its reply may still come, and would be read
            # as the next claim's answer. The next round trip on it connects afresh.
            await _close_quietly(connection)
            raise
        finally:
            self._pass_on(connection)
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    def _pass_on(self, connection: PipelineConnection) -> None:
        """A connection back from a round trip: to the claims that queued meanwhile, else
        idle. Given back by the task's done callback, so that a task cancelled before it
        ran (close()) does not lose it."""
        if not self._waiting:
            self._idle.append(connection)
            return
        task = asyncio.create_task(self._send_waiting(connection), name="upgrade-claims")
        self._round_trips.add(task)
        task.add_done_callback(partial(self._round_trip_done, connection))

    def _round_trip_done(self, connection: PipelineConnection, task: asyncio.Task[None]) -> None:
        self._round_trips.discard(task)
        self._pass_on(connection)

    async def _send_waiting(self, connection: PipelineConnection) -> None:
        """Send the waiting claims on `connection`, a round trip at a time, until none wait."""
        while self._waiting:
            taken = self._waiting[:CLAIMS_PER_ROUND_TRIP]
            del self._waiting[:CLAIMS_PER_ROUND_TRIP]
            batch = [claim for claim in taken if not claim[1].done()]  # not cancelled
            if not batch:
                continue
            try:
                answers = await self._answers(connection, [command for command, _ in batch])
            except Exception as exc:  # RedisError, OSError: each claim raises it
                _fail(batch, exc)  # first: closing may fail, or be cancelled
                await _close_quietly(connection)  # the next round trip connects afresh
                continue
            except BaseException:
                # Cancelled mid round trip (close()): as above, the connection is out of step.
                _fail(batch, redis.exceptions.ConnectionError("upgrade claims closed"))
                await _close_quietly(connection)
                raise
            for (_, waiter), answer in zip(batch, answers, strict=True):
                if waiter.done():
                    continue
                if isinstance(answer, redis.exceptions.ResponseError):
                    waiter.set_exception(answer)
                else:
                    waiter.set_result(answer)

    async def _answers(self, connection: PipelineConnection, commands: list[Any]) -> list[Any]:
        """The round trip's answers. If Redis did not have the script (restarted or flushed),
        the whole batch goes again after loading it: a claim sent twice by the same attempt
        finds its own claims (CLAIM_SCRIPT), so each gets the answer it would have had."""
        script = self._script
        assert script is not None
        answers = await connection.execute(commands, self._timeout)
        if any(isinstance(answer, redis.exceptions.NoScriptError) for answer in answers):
            again = [("SCRIPT", "LOAD", script.script), *commands]
            _, *answers = await connection.execute(again, self._timeout)
        return answers


async def _close_quietly(connection: PipelineConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.close()


def _fail(batch: list[_Waiting], error: BaseException) -> None:
    for _, waiter in batch:
        if not waiter.done():
            waiter.set_exception(error)
