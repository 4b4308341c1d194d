"""Commands across two control planes ("replicas") sharing one real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis.asyncio

from app.config import Settings
from app.control.plane import (
    APPLIED,
    INVALID,
    INVALID_STATE,
    RATE_LIMITED_RESULT,
    REGISTRY_WRITES_PER_ROUND_TRIP,
    UNKNOWN_SESSION,
    ControlClient,
    ControlPlane,
)
from app.redis import keys
from app.redis.client import create_redis
from app.redis.embedded import EmbeddedRedis
from tests.support.clock import ManualClock
from tests.support.registry import wait_registered, wait_unregistered
from tests.support.streams import RecordingTarget, metric, read_stream

Redis = redis.asyncio.Redis
TRANSCRIPT = {"type": "transcript", "data": {"id": "u1", "channelId": 0, "isFinal": True}}


@pytest.fixture
def clock() -> ManualClock:
    """The planes' rate-limit clock: tests move it instead of sleeping."""
    return ManualClock()


@pytest.fixture
async def planes(
    redis_url: str, clock: ManualClock
) -> AsyncIterator[tuple[ControlPlane, ControlPlane]]:
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
    limits = {"event_rate": 1.0, "event_burst": 2, "clock": clock}
    pair = (
        ControlPlane(clients[0], "replica-a", block_seconds=0.2, **limits),
        ControlPlane(clients[1], "replica-b", block_seconds=0.2, **limits),
    )
    for plane in pair:
        await plane.start()
    yield pair
    for plane in pair:
        await plane.stop()
    for client in clients:
        await client.aclose()


async def test_commands_reach_the_replica_holding_the_session(
    planes: tuple[ControlPlane, ControlPlane], redis_client: Redis
) -> None:
    plane_a, plane_b = planes
    on_a, on_b = RecordingTarget(), RecordingTarget()
    plane_a.register("session-a", on_a)
    plane_b.register("session-b", on_b)
    await wait_registered(redis_client, "session-a", "replica-a")
    await wait_registered(redis_client, "session-b", "replica-b")
    control = ControlClient(redis_client)

    reply = await control.request("session-b", "pause")
    assert (reply.result, reply.replica, reply.command) == (APPLIED, "replica-b", "pause")
    reply = await control.request("session-a", "event", entities=[TRANSCRIPT])
    assert (reply.result, reply.replica) == (APPLIED, "replica-a")
    command_id = await control.send("session-b", "disconnect", reason="completed", info="bye")
    reply = await control.wait_reply(command_id, timeout=5)
    assert reply.command_id == command_id
    assert reply.result == APPLIED

    assert [c.command for c in on_b.applied] == ["pause", "disconnect"]
    assert (on_b.applied[1].reason, on_b.applied[1].info) == ("completed", "bye")
    assert [c.command for c in on_a.applied] == ["event"]
    assert on_a.applied[0].entities == [TRANSCRIPT]
    assert on_a.applied[0].session_id == "session-a"


async def test_unknown_and_closed_sessions_get_a_recorded_error_reply(
    planes: tuple[ControlPlane, ControlPlane], redis_client: Redis
) -> None:
    plane_a, _ = planes
    control = ControlClient(redis_client)
    reply = await control.request("nobody", "resume")
    assert reply.result == UNKNOWN_SESSION

    target = RecordingTarget()
    plane_a.register("short-lived", target)
    await wait_registered(redis_client, "short-lived", "replica-a")
    plane_a.unregister("short-lived")
    # Whether the registry entry is already gone or not, the answer is unknown_session.
    reply = await control.request("short-lived", "pause")
    assert reply.result == UNKNOWN_SESSION
    assert target.applied == []

    recorded = await read_stream(redis_client, keys.CONTROL_REPLIES_STREAM)
    results = [(f[b"session_id"], f[b"result"]) for _, f in recorded]
    assert results == [(b"nobody", b"unknown_session"), (b"short-lived", b"unknown_session")]
    await wait_unregistered(redis_client, "short-lived")


async def test_a_replica_answers_for_a_session_it_no_longer_holds(
    planes: tuple[ControlPlane, ControlPlane], redis_client: Redis
) -> None:
    _, plane_b = planes
    # Registry entry left behind (e.g. the session ended a moment ago): the replica answers.
    await redis_client.set(keys.session_owner("gone"), "replica-b", ex=30)
    reply = await ControlClient(redis_client).request("gone", "pause")
    assert (reply.result, reply.replica) == (UNKNOWN_SESSION, "replica-b")
    assert plane_b.sessions == 0


def _send_from_another_thread(redis_url: str, session_id: str, command: str) -> str:
    """ControlClient.send on an event loop and client of its own, in the calling thread."""

    async def send() -> str:
        client = Redis.from_url(redis_url)
        try:
            return await ControlClient(client).send(session_id, command)
        finally:
            await client.aclose()

    return asyncio.run(send())


async def test_a_command_sent_the_moment_the_plane_has_started_is_answered(
    redis_url: str, redis_client: Redis
) -> None:
    await redis_client.set(keys.session_owner("gone"), "replica-c", ex=30)
    client = Redis.from_url(redis_url)
    plane = ControlPlane(client, "replica-c", block_seconds=0.2)
    await plane.start()
    try:
        # This event loop runs nothing of the plane until the command is in its inbox.
        with ThreadPoolExecutor(1) as pool:
            command_id = pool.submit(_send_from_another_thread, redis_url, "gone", "pause").result(
                timeout=10
            )
        reply = await ControlClient(redis_client).wait_reply(command_id, timeout=5)
    finally:
        await plane.stop()
        await client.aclose()
    assert (reply.result, reply.replica) == (UNKNOWN_SESSION, "replica-c")


async def test_a_plane_started_while_redis_is_down_answers_once_it_is_back(
    own_redis: EmbeddedRedis,
) -> None:
    own_redis.stop(keep_data=True)
    client = Redis.from_url(own_redis.url)
    plane = ControlPlane(client, "replica-d", block_seconds=0.2, retry_max_seconds=0.2)
    await plane.start()  # the inbox's tail is left to the loop: it retries
    try:
        own_redis.start()  # same port
        consumer = Redis.from_url(own_redis.url)
        try:
            await consumer.set(keys.session_owner("gone"), "replica-d", ex=30)
            # The plane reads its inbox's tail once Redis is back (within its backoff): a
            # command sent before that counts as older than the plane and is not answered,
            # so the sender asks again, as a sender without a reply would.
            control = ControlClient(consumer)
            reply = None
            for _ in range(10):
                with contextlib.suppress(TimeoutError):
                    reply = await control.request("gone", "pause", reply_timeout=1)
                    break
        finally:
            await consumer.aclose()
    finally:
        await plane.stop()
        await client.aclose()
    assert reply is not None, "no command answered"
    assert (reply.result, reply.replica) == (UNKNOWN_SESSION, "replica-d")


async def test_invalid_parameters_and_invalid_state(
    planes: tuple[ControlPlane, ControlPlane], redis_client: Redis
) -> None:
    plane_a, _ = planes
    target = RecordingTarget()
    plane_a.register("s1", target)
    await wait_registered(redis_client, "s1", "replica-a")
    control = ControlClient(redis_client)
    invalid: list[tuple[str, dict[str, Any]]] = [
        ("event", {"entities": []}),
        ("event", {"entities": [{"type": "transcript"}]}),
        ("disconnect", {"reason": "because"}),
        ("pause", {"now": True}),
    ]
    for command, params in invalid:
        reply = await control.request("s1", command, **params)
        assert reply.result == INVALID, (command, params)
        assert reply.detail
    with pytest.raises(ValueError, match="unknown command"):
        await control.send("s1", "explode")
    assert target.applied == []
    target.result = INVALID_STATE
    assert (await control.request("s1", "resume")).result == INVALID_STATE


async def test_event_rate_limit_and_client_retry_after(
    planes: tuple[ControlPlane, ControlPlane], redis_client: Redis, clock: ManualClock
) -> None:
    plane_a, _ = planes
    target = RecordingTarget()
    plane_a.register("chatty", target)
    await wait_registered(redis_client, "chatty", "replica-a")
    control = ControlClient(redis_client)
    results = [
        (await control.request("chatty", "event", entities=[TRANSCRIPT])).result for _ in range(3)
    ]
    assert results == [APPLIED, APPLIED, RATE_LIMITED_RESULT]  # burst 2
    clock.advance(1.1)  # 1 token per second
    assert (await control.request("chatty", "event", entities=[TRANSCRIPT])).result == APPLIED

    clock.advance(1.1)
    plane_a.client_retry_after("chatty", 1.0)  # the client said 429, retryAfter 1 s
    held = await control.request("chatty", "event", entities=[TRANSCRIPT])
    assert held.result == RATE_LIMITED_RESULT
    assert held.detail is not None
    assert "retry after" in held.detail
    clock.advance(1.1)
    assert (await control.request("chatty", "event", entities=[TRANSCRIPT])).result == APPLIED
    assert len(target.applied) == 4
    # Rate limiting applies to `event` only.
    assert (await control.request("chatty", "pause")).result == APPLIED


async def test_wait_reply_times_out_without_an_answer(redis_client: Redis) -> None:
    await redis_client.set(keys.session_owner("orphan"), "replica-dead", ex=30)
    control = ControlClient(redis_client)
    command_id = await control.send("orphan", "pause")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await control.wait_reply(command_id, timeout=0.5)
    assert time.monotonic() - started >= 0.5
    inbox = await read_stream(redis_client, keys.control_inbox("replica-dead"))
    assert inbox[0][1][b"command_id"] == command_id.encode()
    assert await redis_client.ttl(keys.control_inbox("replica-dead")) > 0


async def test_registry_entry_is_refreshed_while_the_session_lives(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    plane = ControlPlane(client, "replica-r", session_ttl=1.5, block_seconds=0.2)
    await plane.start()
    plane.register("long", RecordingTarget())
    await asyncio.sleep(2.5)  # well past one TTL (refreshed every 0.5 s)
    assert await client.get(keys.session_owner("long")) == b"replica-r"
    await plane.stop()  # deregisters what is still live
    assert not await client.exists(keys.session_owner("long"))
    await client.aclose()


async def test_ending_a_session_keeps_another_replicas_registry_entry(redis_url: str) -> None:
    """The same session id live on two replicas (a duplicate, or a reconnect that landed
    elsewhere): the replica that lets go must not delete the other one's routing."""
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(3)]
    plane_a = ControlPlane(clients[0], "replica-a", block_seconds=0.2)
    plane_b = ControlPlane(clients[1], "replica-b", block_seconds=0.2)
    observer = clients[2]
    for plane in (plane_a, plane_b):
        await plane.start()
    try:
        on_b = RecordingTarget()
        plane_a.register("dup", RecordingTarget())
        await wait_registered(observer, "dup", "replica-a")
        plane_b.register("dup", on_b)  # the newer registration takes the routing
        await wait_registered(observer, "dup", "replica-b")

        plane_a.unregister("dup")  # registry loop: compare-and-delete
        # Barrier: registry rounds run one after another, so once a later round has removed
        # `marker`, the round that handled `dup` is done.
        plane_a.register("marker", RecordingTarget())
        await wait_registered(observer, "marker", "replica-a")
        plane_a.unregister("marker")
        await wait_unregistered(observer, "marker")
        assert await observer.get(keys.session_owner("dup")) == b"replica-b"
        reply = await ControlClient(observer).request("dup", "pause")
        assert (reply.result, reply.replica) == (APPLIED, "replica-b")

        plane_a.register("dup-2", RecordingTarget())
        await wait_registered(observer, "dup-2", "replica-a")
        plane_b.register("dup-2", RecordingTarget())
        await wait_registered(observer, "dup-2", "replica-b")
        await plane_a.stop()  # deregisters what it still holds: compare-and-delete too
        assert await observer.get(keys.session_owner("dup-2")) == b"replica-b"
        assert await observer.get(keys.session_owner("dup")) == b"replica-b"
        assert [c.command for c in on_b.applied] == ["pause"]
    finally:
        for plane in (plane_a, plane_b):
            await plane.stop()
        for client in clients:
            await client.aclose()


async def test_plane_from_settings_reads_its_inbox_within_a_short_socket_timeout(
    redis_url: str,
) -> None:
    """With a Redis timeout below the default 1 s block, XREAD BLOCK must still return
    before the socket times out: no failed reads while idle, and commands get through."""
    settings = Settings(redis_timeout_seconds=0.5, replica_id="replica-t")
    client = create_redis(settings, redis_url)
    assert isinstance(client, Redis)  # standalone, with the settings' 0.5 s socket timeout
    plane = ControlPlane.from_settings(client, settings)
    failed_reads = {"operation": "control_read"}
    failures_before = metric("audiohook_redis_errors_total", failed_reads)
    await plane.start()
    try:
        target = RecordingTarget()
        plane.register("short-timeout", target)
        await wait_registered(client, "short-timeout", "replica-t")
        await asyncio.sleep(1.5)  # idle inbox: several blocking reads, each must end cleanly
        reply = await ControlClient(client).request("short-timeout", "pause", reply_timeout=2.0)
        assert (reply.result, reply.replica) == (APPLIED, "replica-t")
        assert [c.command for c in target.applied] == ["pause"]
        assert metric("audiohook_redis_errors_total", failed_reads) == failures_before
    finally:
        await plane.stop()
        await client.aclose()


async def test_the_registry_of_many_sessions_is_written_and_refreshed_in_full(
    redis_url: str,
) -> None:
    """Hundreds of sessions: the registry is written over several round trips (a bounded
    number of writes each), and every session's entry is kept, not only the first batch's."""
    client = redis.asyncio.Redis.from_url(redis_url)
    plane = ControlPlane(client, "replica-many", session_ttl=1.5, block_seconds=0.2)
    await plane.start()
    session_ids = [f"many-{index}" for index in range(3 * REGISTRY_WRITES_PER_ROUND_TRIP + 7)]
    try:
        for session_id in session_ids:
            plane.register(session_id, RecordingTarget())
        await asyncio.sleep(2.5)  # well past one TTL (refreshed every 0.5 s): only refreshed
        owners = await client.mget([keys.session_owner(s) for s in session_ids])
        assert owners == [b"replica-many"] * len(session_ids)
        ended = [keys.session_owner(s) for s in session_ids[::2]]
        pipe = client.pipeline(transaction=False)
        for key in ended:
            pipe.persist(key)  # from now on only a delete removes them, not their TTL
        await pipe.execute()
        for session_id in session_ids[::2]:
            plane.unregister(session_id)
        deadline = time.monotonic() + 5
        while await client.exists(*ended):
            assert time.monotonic() < deadline, "registry entries of ended sessions not deleted"
            await asyncio.sleep(0.05)
        owners = await client.mget([keys.session_owner(s) for s in session_ids[1::2]])
        assert owners == [b"replica-many"] * len(session_ids[1::2])
    finally:
        await plane.stop()
        await client.aclose()


async def test_a_registry_write_redis_refuses_is_counted_and_retried(redis_url: str) -> None:
    """Registry writes are pipelined with Redis error replies kept as values: a refused write
    (here the compare-and-delete meets a key of the wrong type) must not pass for done."""
    client = redis.asyncio.Redis.from_url(redis_url)
    plane = ControlPlane(client, "replica-e", block_seconds=0.2, retry_max_seconds=0.1)
    await plane.start()
    refused = {"operation": "control_registry"}
    try:
        plane.register("refused", RecordingTarget())
        await wait_registered(client, "refused", "replica-e")
        errors_before = metric("audiohook_redis_errors_total", refused)
        await client.delete(keys.session_owner("refused"))
        await client.rpush(keys.session_owner("refused"), "not a registry entry")
        plane.unregister("refused")
        deadline = time.monotonic() + 5
        while metric("audiohook_redis_errors_total", refused) < errors_before + 2:
            assert time.monotonic() < deadline, "refused registry write not retried"
            await asyncio.sleep(0.02)
        await client.delete(keys.session_owner("refused"))
        await client.set(keys.session_owner("refused"), "replica-e")
        while await client.exists(keys.session_owner("refused")):  # the retry goes through
            assert time.monotonic() < deadline, "registry entry not deleted once writable"
            await asyncio.sleep(0.02)
    finally:
        await plane.stop()
        await client.aclose()


async def test_an_entry_written_by_the_upgrade_claim_is_trusted_while_fresh_and_released(
    planes: tuple[ControlPlane, ControlPlane], redis_client: Redis, clock: ManualClock
) -> None:
    """The claim writes a new session's entry (app/security/upgrade_claims.py). Here a stand-in
    value marks it, so a write by the plane would show."""
    plane, _ = planes
    claimed = "written-by-the-claim"

    async def claim(session_id: str, value: str = claimed) -> None:
        await redis_client.set(keys.session_owner(session_id), value, ex=30)
        plane.routed_at_claim(session_id)

    await claim("fresh")
    clock.advance(plane_ttl_third(plane) - 0.1)
    plane.register("fresh", RecordingTarget())  # no write: the claim's entry stays
    await claim("stale")
    clock.advance(plane_ttl_third(plane) + 0.1)
    plane.register("stale", RecordingTarget())  # past a third of the TTL: written again
    await claim("never-opened", "replica-a")  # deleted only while it names this replica
    await claim("opened-then-ended", "replica-a")
    plane.register("opened-then-ended", RecordingTarget())
    plane.release("opened-then-ended")  # registered: its entry is the session's own now
    plane.release("never-opened")  # a connection that never registered: deleted
    plane.release("unknown")  # nothing claimed: nothing to do
    await claim("reconnected", "replica-a")
    # A first connection ends unopened and, before its delete goes out, a new connection's
    # claim finds the entry: it stays.
    plane.release("reconnected")
    plane.routed_at_claim("reconnected")

    # Registry rounds take all that is pending at once: once "stale" is rewritten and
    # "never-opened" deleted, every decision above has been carried out.
    await wait_registered(redis_client, "stale", "replica-a")
    await wait_unregistered(redis_client, "never-opened")
    assert await redis_client.get(keys.session_owner("fresh")) == claimed.encode()
    assert await redis_client.get(keys.session_owner("opened-then-ended")) == b"replica-a"
    assert await redis_client.get(keys.session_owner("reconnected")) == b"replica-a"
    reply = await ControlClient(redis_client).request("stale", "pause")
    assert (reply.result, reply.replica) == (APPLIED, "replica-a")


async def test_stopping_deletes_the_entries_of_claims_never_registered(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    plane = ControlPlane(client, "replica-s", block_seconds=0.2)
    await plane.start()
    await client.set(keys.session_owner("claimed"), "replica-s", ex=30)
    plane.routed_at_claim("claimed")
    await plane.stop()
    assert not await client.exists(keys.session_owner("claimed"))
    await client.aclose()


def plane_ttl_third(plane: ControlPlane) -> float:
    return plane.entry_ttl_ms / 3000
