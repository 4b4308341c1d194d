"""The nonce and session-id claims of a verified upgrade, against a real redis-server and a real
3-master Redis Cluster: a replay is refused and writes nothing, a conflicting session id is
refused after its nonce is spent, a retried command finds its own claims, and on a single
server both claims are one command."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as ClusterClient

from app.control.plane import ControlPlane
from app.redis import keys
from app.redis.client import RedisClient, create_redis
from app.redis.embedded import EmbeddedRedis
from app.security.nonces import NonceCache, NonceStoreUnavailable
from app.security.session_owners import SessionOwners
from app.security.upgrade_claims import (
    CLAIM_CONNECTIONS,
    CLAIMS_PER_ROUND_TRIP,
    Claim,
    UpgradeClaims,
)
from tests.support.redis_servers import RedisCluster, redis_stopped
from tests.support.registry import wait_unregistered
from tests.support.streams import streams_settings

STREAM_TTL = 3600
NONCE = "claims-test-nonce-0123456789abcdef"
OTHER_NONCE = "claims-test-nonce-fedcba9876543210"
SESSION = "6c6fd3a8-4b9a-4d8c-9a64-3c1bd8a1b7a5"
REPLICA = "replica-claims"
OTHER_SESSION = "0f3e1c52-7f0e-4b86-a0a4-8b5c6f43c0d1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(params=["standalone", "cluster"])
async def client(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[RedisClient]:
    """A client of a single server (claims in one script) or of a cluster (two commands)."""
    if request.param == "standalone":
        standalone = redis.asyncio.Redis.from_url(redis_url)
        yield standalone
        await standalone.aclose()
        return
    cluster: RedisCluster = request.getfixturevalue("cluster")
    clustered = create_redis(streams_settings(redis_cluster=True), cluster.url)
    assert isinstance(clustered, ClusterClient)
    await clustered.flushall()  # routed to every primary
    yield clustered
    await clustered.aclose()


def claims_for(client: RedisClient, plane: ControlPlane | None = None) -> UpgradeClaims:
    """Claims whose registry is `plane` (default: a plane of REPLICA, never started)."""
    registry = plane or ControlPlane(client, REPLICA)
    return UpgradeClaims(client, NonceCache(client), SessionOwners(client, STREAM_TTL), registry)


async def test_a_replayed_nonce_is_refused_and_claims_no_session_id(client: RedisClient) -> None:
    claims, now = claims_for(client), time.time()
    assert await claims.claim(SESSION, "a", NONCE, now + 10, now) is Claim.CLAIMED
    # The same nonce again, by another attempt: a replay, whatever session id it names ...
    assert await claims.claim(SESSION, "a", NONCE, now + 10, now) is Claim.REPLAYED_NONCE
    assert await claims.claim(OTHER_SESSION, "b", NONCE, now + 10, now) is Claim.REPLAYED_NONCE
    # ... and a replay writes nothing: the other session id is still nobody's.
    assert await client.exists(keys.session_integration(OTHER_SESSION)) == 0
    assert await claims.claim(OTHER_SESSION, "a", OTHER_NONCE, now + 10, now) is Claim.CLAIMED


async def test_another_integrations_session_id_is_refused_after_its_nonce_is_spent(
    client: RedisClient,
) -> None:
    claims, now = claims_for(client), time.time()
    assert await claims.claim(SESSION, "a", NONCE, now + 10, now) is Claim.CLAIMED
    conflict = await claims.claim(SESSION, "b", OTHER_NONCE, now + 10, now)
    assert conflict is Claim.SESSION_ID_CONFLICT
    assert await client.get(keys.session_integration(SESSION)) == b"a"
    # The refused request's nonce is used: sent again, it is a replay before it is a conflict.
    replay = await claims.claim(SESSION, "b", OTHER_NONCE, now + 10, now)
    assert replay is Claim.REPLAYED_NONCE


async def test_the_owning_integration_reconnects_with_a_new_nonce(client: RedisClient) -> None:
    claims, now = claims_for(client), time.time()
    assert await claims.claim(SESSION, "a", NONCE, now + 10, now) is Claim.CLAIMED
    await client.expire(keys.session_integration(SESSION), 100)
    assert await claims.claim(SESSION, "a", OTHER_NONCE, now + 10, now) is Claim.CLAIMED
    owner_ttl = await client.ttl(keys.session_integration(SESSION))
    assert owner_ttl > STREAM_TTL  # renewed: the stream TTL plus the longest call
    nonce_ttl = await client.ttl(keys.nonce_key(NONCE))
    assert 10 <= nonce_ttl <= 13  # the rest of the acceptance window plus the default margin


async def test_a_claim_retried_by_the_same_attempt_finds_its_own_claims(
    client: RedisClient,
) -> None:
    claims, now = claims_for(client), time.time()
    first = await claims.claim(SESSION, "a", NONCE, now + 10, now, token="attempt-1")
    again = await claims.claim(SESSION, "a", NONCE, now + 10, now, token="attempt-1")
    other = await claims.claim(SESSION, "a", NONCE, now + 10, now, token="attempt-2")
    assert (first, again, other) == (Claim.CLAIMED, Claim.CLAIMED, Claim.REPLAYED_NONCE)
    assert await client.get(keys.nonce_key(NONCE)) == b"attempt-1"


async def test_an_unsigned_request_claims_the_session_id_only(client: RedisClient) -> None:
    claims, now = claims_for(client), time.time()
    assert await claims.claim(SESSION, "a", None, None, now) is Claim.CLAIMED
    assert await claims.claim(SESSION, "a", None, None, now) is Claim.CLAIMED
    assert await claims.claim(SESSION, "b", None, None, now) is Claim.SESSION_ID_CONFLICT
    assert await client.get(keys.session_integration(SESSION)) == b"a"


async def test_on_a_single_server_both_claims_are_one_command(
    redis_client: redis.asyncio.Redis,
) -> None:
    claims, now = claims_for(redis_client), time.time()
    # Loads the scripts, so the counted claims below are the claims themselves.
    await claims.claim(OTHER_SESSION, "a", OTHER_NONCE, now + 10, now)
    await redis_client.config_resetstat()
    assert await claims.claim(SESSION, "a", NONCE, now + 10, now) is Claim.CLAIMED
    stats = await redis_client.info("commandstats")
    ignored = {"cmdstat_config", "cmdstat_info"}
    counted = {name: value["calls"] for name, value in stats.items() if name not in ignored}
    # One EVALSHA; the GETs and SETs are the script's own (the nonce and the owner read, then
    # written; the registry entry written if absent).
    assert counted == {"cmdstat_evalsha": 1, "cmdstat_get": 2, "cmdstat_set": 3}, counted


async def test_on_a_single_server_the_claim_routes_a_new_session_here(
    redis_client: redis.asyncio.Redis,
) -> None:
    plane = ControlPlane(redis_client, REPLICA, session_ttl=30.0)
    claims, now = claims_for(redis_client, plane), time.time()
    assert await claims.claim(SESSION, "a", NONCE, now + 10, now) is Claim.CLAIMED
    assert await redis_client.get(keys.session_owner(SESSION)) == REPLICA.encode()
    assert 29_000 < await redis_client.pttl(keys.session_owner(SESSION)) <= 30_000
    # An entry already there (the id live on another replica) is left to the plane: untouched.
    await redis_client.set(keys.session_owner(OTHER_SESSION), "replica-other", px=5_000)
    assert await claims.claim(OTHER_SESSION, "a", OTHER_NONCE, now + 10, now) is Claim.CLAIMED
    assert await redis_client.get(keys.session_owner(OTHER_SESSION)) == b"replica-other"
    assert await redis_client.pttl(keys.session_owner(OTHER_SESSION)) <= 5_000
    # So is one naming this replica (an earlier connection's): not this claim's to release.
    earlier = f"{SESSION[:-2]}02"
    await redis_client.set(keys.session_owner(earlier), REPLICA, px=5_000)
    assert await claims.claim(earlier, "a", NONCE + "-2", now + 10, now) is Claim.CLAIMED
    # A replay and a session id of another integration route nothing here.
    third, fourth = f"{SESSION[:-2]}03", f"{SESSION[:-2]}04"
    assert await claims.claim(third, "a", NONCE, now + 10, now) is Claim.REPLAYED_NONCE
    await redis_client.set(keys.session_integration(fourth), "b")
    assert await claims.claim(fourth, "a", NONCE + "-4", now + 10, now) is (
        Claim.SESSION_ID_CONFLICT
    )
    assert await redis_client.exists(keys.session_owner(third), keys.session_owner(fourth)) == 0
    # The plane learnt which entry the claim wrote: its release deletes that one only (the
    # registry deletes in one round, so `earlier` would be gone with SESSION).
    await plane.start()
    try:
        claims.release(earlier)
        claims.release(SESSION)
        await wait_unregistered(redis_client, SESSION)
        assert await redis_client.get(keys.session_owner(earlier)) == REPLICA.encode()
    finally:
        await plane.stop()
        await claims.close()


async def test_a_retried_claim_finds_the_entry_its_first_run_wrote(
    redis_client: redis.asyncio.Redis,
) -> None:
    """The first run's answer was lost (a connection dropped after Redis ran it, or a batch
    sent again after a script flush): the retry is told the entry is this attempt's."""
    first_plane = ControlPlane(redis_client, REPLICA)
    now = time.time()
    first = await claims_for(redis_client, first_plane).claim(
        SESSION, "a", NONCE, now + 10, now, token="attempt-1"
    )
    assert first is Claim.CLAIMED
    plane = ControlPlane(redis_client, REPLICA)  # knows nothing of the first run
    claims = claims_for(redis_client, plane)
    await plane.start()
    try:
        again = await claims.claim(SESSION, "a", NONCE, now + 10, now, token="attempt-1")
        assert again is Claim.CLAIMED
        claims.release(SESSION)  # deletes the entry only if the retry was told it wrote it
        await wait_unregistered(redis_client, SESSION)
    finally:
        await plane.stop()
        await claims.close()


async def test_redis_unavailable_raises(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path / "redis") as server:
        client = redis.asyncio.Redis.from_url(server.url, socket_timeout=1.0)
        try:
            claims, now = claims_for(client), time.time()
            with redis_stopped(server):
                with pytest.raises(NonceStoreUnavailable):
                    await claims.claim(SESSION, "a", NONCE, now + 10, now)
                with pytest.raises(NonceStoreUnavailable):
                    await claims.claim(SESSION, "a", None, None, now)
        finally:
            await client.aclose()


# --- standalone Redis: the claims' own connections -------------------------------------------

BUSY_SCRIPT = """
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1]) then
    return 1
  end
end
"""


async def test_claims_beyond_the_own_connections_are_all_decided(
    redis_client: redis.asyncio.Redis,
) -> None:
    claims, now = claims_for(redis_client), time.time()
    sessions = [f"{SESSION[:-2]}{n:02d}" for n in range(3 * CLAIM_CONNECTIONS)]
    nonces = [f"{NONCE}-{n}" for n in range(len(sessions))]
    first = await asyncio.gather(
        *(claims.claim(s, "a", n, now + 10, now) for s, n in zip(sessions, nonces, strict=True))
    )
    again = await asyncio.gather(
        *(
            claims.claim(s, "b", f"{n}-new", now + 10, now)
            for s, n in zip(sessions, nonces, strict=True)
        ),
        *(claims.claim(s, "a", n, now + 10, now) for s, n in zip(sessions, nonces, strict=True)),
    )
    assert first == [Claim.CLAIMED] * len(sessions)
    assert again == [Claim.SESSION_ID_CONFLICT] * len(sessions) + [Claim.REPLAYED_NONCE] * len(
        sessions
    )
    await claims.close()


async def test_a_flushed_script_is_loaded_again(redis_client: redis.asyncio.Redis) -> None:
    claims, now = claims_for(redis_client), time.time()
    assert await claims.claim(SESSION, "a", NONCE, now + 10, now) is Claim.CLAIMED
    await redis_client.script_flush()
    assert await claims.claim(OTHER_SESSION, "a", OTHER_NONCE, now + 10, now) is Claim.CLAIMED
    assert await claims.claim(OTHER_SESSION, "b", NONCE + "x", now + 10, now) is (
        Claim.SESSION_ID_CONFLICT
    )
    await claims.close()


async def test_a_claim_cancelled_in_flight_leaves_no_answer_for_the_next(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    claims, now = claims_for(redis_client), time.time()
    assert await claims.claim(SESSION, "a", NONCE, now + 10, now) is Claim.CLAIMED
    busy = redis.asyncio.Redis.from_url(redis_url)
    try:
        # Redis busy for a while: the next claim's command waits in its socket, unanswered.
        async def keep_busy() -> None:
            await busy.eval(BUSY_SCRIPT, 0, 500_000)

        hold = asyncio.create_task(keep_busy())
        await asyncio.sleep(0.05)
        cancelled = asyncio.create_task(claims.claim(SESSION, "a", NONCE + "-2", now + 10, now))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(claims._idle) < CLAIM_CONNECTIONS:  # written, waiting for its answer
                break
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await hold
        # The cancelled claim's answer (CLAIMED) must not be read as this one's.
        assert await claims.claim(SESSION, "b", OTHER_NONCE, now + 10, now) is (
            Claim.SESSION_ID_CONFLICT
        )
    finally:
        await busy.aclose()
        await claims.close()


async def _connections_named(observer: redis.asyncio.Redis, name: str) -> int:
    clients: list[dict[str, str]] = await observer.client_list()
    return sum(1 for entry in clients if entry.get("name") == name)


async def test_a_burst_of_claims_shares_the_own_connections_and_each_gets_its_answer(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    """Many more claims at once than connections of their own: none opens a connection of
    its own (through the pool, each did, one after another), several leave together in one
    round trip, and each gets the answer to its own claim."""
    client = redis.asyncio.Redis.from_url(redis_url, client_name="claims-burst")
    claims, now = claims_for(client), time.time()
    count = 2 * CLAIMS_PER_ROUND_TRIP + 20  # more than one round trip's worth waiting
    sessions = [f"{SESSION[:-4]}{n:04d}" for n in range(count)]
    try:
        first = await asyncio.wait_for(
            asyncio.gather(
                *(claims.claim(s, "a", f"{NONCE}-{s}", now + 10, now) for s in sessions)
            ),
            timeout=10,
        )
        assert first == [Claim.CLAIMED] * count
        assert await _connections_named(redis_client, "claims-burst") <= CLAIM_CONNECTIONS

        await redis_client.script_flush()  # the next round trips find the script gone
        expected: list[Claim] = []
        attempts = []
        for index, session in enumerate(sessions):
            kind = index % 3
            if kind == 0:  # the same nonce again: a replay
                attempts.append(claims.claim(session, "a", f"{NONCE}-{session}", now + 10, now))
                expected.append(Claim.REPLAYED_NONCE)
            elif kind == 1:  # another integration, its own nonce: the id is taken
                attempts.append(
                    claims.claim(session, "b", f"{OTHER_NONCE}-{session}", now + 10, now)
                )
                expected.append(Claim.SESSION_ID_CONFLICT)
            else:  # the owner again with a new nonce
                attempts.append(
                    claims.claim(session, "a", f"{OTHER_NONCE}-{session}", now + 10, now)
                )
                expected.append(Claim.CLAIMED)
        assert await asyncio.wait_for(asyncio.gather(*attempts), timeout=10) == expected
        assert await _connections_named(redis_client, "claims-burst") <= CLAIM_CONNECTIONS
    finally:
        await claims.close()
        await client.aclose()


@dataclass
class BusyRedis:
    claims: UpgradeClaims
    now: float
    in_flight: list[asyncio.Task[Claim]]  # a claim on each of the claims' own connections
    hold: asyncio.Task[object]  # the script keeping Redis busy


@contextlib.asynccontextmanager
async def both_connections_out(
    redis_client: redis.asyncio.Redis, redis_url: str, busy_seconds: float
) -> AsyncIterator[BusyRedis]:
    """Claims whose own connections both have a round trip out, unanswered while Redis is
    busy in a script for `busy_seconds` (commands sent meanwhile wait for it)."""
    claims, now = claims_for(redis_client), time.time()
    await claims.claim(OTHER_SESSION, "a", OTHER_NONCE, now + 10, now)  # loads the script
    busy = redis.asyncio.Redis.from_url(redis_url)

    async def keep_busy() -> object:
        return await busy.eval(BUSY_SCRIPT, 0, str(int(busy_seconds * 1_000_000)))

    try:
        hold = asyncio.create_task(keep_busy())
        await asyncio.sleep(0.05)
        in_flight = []
        for n in range(CLAIM_CONNECTIONS):
            session, nonce = f"{SESSION[:-2]}9{n}", f"{NONCE}-9{n}"
            in_flight.append(asyncio.create_task(claims.claim(session, "a", nonce, now + 10, now)))
            await asyncio.sleep(0.02)  # taken by its round trip before the next is made
        yield BusyRedis(claims, now, in_flight, hold)
    finally:
        await claims.close()
        await busy.aclose()


async def test_closing_fails_the_claims_still_waiting(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    async with both_connections_out(redis_client, redis_url, 1.0) as busy:
        claims, now = busy.claims, busy.now
        waiting = [
            asyncio.create_task(
                claims.claim(f"{SESSION[:-2]}{n:02d}", "a", f"{NONCE}-{n}", now + 10, now)
            )
            for n in range(4)
        ]
        await asyncio.sleep(0.05)
        # Redis is busy: all wait.
        assert not any(task.done() for task in busy.in_flight + waiting)
        await claims.close()
        results = await asyncio.wait_for(
            asyncio.gather(*waiting, return_exceptions=True), timeout=0.5
        )
        assert all(isinstance(result, NonceStoreUnavailable) for result in results), results
        await busy.hold
        # The round trips already out are answered; claims made later are sent.
        assert await asyncio.gather(*busy.in_flight) == [Claim.CLAIMED] * CLAIM_CONNECTIONS
        assert await claims.claim(SESSION, "a", NONCE, now + 10, now) is Claim.CLAIMED


async def test_a_claim_cancelled_while_it_waits_is_never_sent(
    redis_client: redis.asyncio.Redis, redis_url: str
) -> None:
    async with both_connections_out(redis_client, redis_url, 0.3) as busy:
        claims, now = busy.claims, busy.now
        cancelled = asyncio.create_task(claims.claim(SESSION, "a", NONCE, now + 10, now))
        after = asyncio.create_task(claims.claim(SESSION, "b", OTHER_NONCE + "-b", now + 10, now))
        await asyncio.sleep(0.02)
        cancelled.cancel()
        await busy.hold
        assert await asyncio.gather(*busy.in_flight) == [Claim.CLAIMED] * CLAIM_CONNECTIONS
        # The claim behind it gets its own answer: the id was not taken by the cancelled one.
        assert await after is Claim.CLAIMED
        # The cancelled claim's nonce was never claimed: another attempt may still use it.
        again = claims.claim(OTHER_SESSION[:-1] + "9", "a", NONCE, now + 10, now)
        assert await again is Claim.CLAIMED


async def test_claims_made_after_a_close_that_raced_a_burst_are_answered(
    redis_client: redis.asyncio.Redis,
) -> None:
    """close() at each point of a burst of claims (some waiting, some in round trips, a
    connection just handed on to the claims that waited): no claim is left unanswered, and
    no connection is lost, so claims made later are still sent."""
    claims, now = claims_for(redis_client), time.time()
    try:
        for steps in range(30):
            burst = [
                asyncio.create_task(
                    claims.claim(f"{SESSION[:-4]}{steps:02d}{n:02d}", "a", f"{NONCE}-{steps}-{n}",
                                 now + 10, now)
                )
                for n in range(4 * CLAIM_CONNECTIONS)
            ]  # fmt: skip
            for _ in range(steps):
                await asyncio.sleep(0)
            await claims.close()
            answers = await asyncio.wait_for(
                asyncio.gather(*burst, return_exceptions=True), timeout=2.0
            )
            assert all(a is Claim.CLAIMED or isinstance(a, NonceStoreUnavailable) for a in answers)
            later = claims.claim(OTHER_SESSION, "a", f"{OTHER_NONCE}-{steps}", now + 10, now)
            assert await asyncio.wait_for(later, timeout=2.0) is Claim.CLAIMED
    finally:
        await claims.close()
