"""Commands across two control planes ("replicas") sharing one real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from app.streams import keys
from app.streams.control import (
    APPLIED,
    INVALID,
    INVALID_STATE,
    RATE_LIMITED_RESULT,
    UNKNOWN_SESSION,
    ControlClient,
    ControlPlane,
)
from tests.support.streams import RecordingTarget, read_stream

Redis = redis.asyncio.Redis
TRANSCRIPT = {"type": "transcript", "data": {"id": "u1", "channelId": 0, "isFinal": True}}


@pytest.fixture
async def planes(redis_url: str) -> AsyncIterator[tuple[ControlPlane, ControlPlane]]:
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
    pair = (
        ControlPlane(clients[0], "replica-a", block_seconds=0.2, event_rate=1.0, event_burst=2),
        ControlPlane(clients[1], "replica-b", block_seconds=0.2, event_rate=1.0, event_burst=2),
    )
    for plane in pair:
        await plane.start()
    yield pair
    for plane in pair:
        await plane.stop()
    for client in clients:
        await client.aclose()


async def _registered(redis_client: Redis, session_id: str, replica: str) -> None:
    deadline = time.monotonic() + 5
    while await redis_client.get(keys.session_owner(session_id)) != replica.encode():
        assert time.monotonic() < deadline, "registry entry not written"
        await asyncio.sleep(0.01)


async def test_commands_reach_the_replica_holding_the_session(
    planes: tuple[ControlPlane, ControlPlane], redis_client: Redis
) -> None:
    plane_a, plane_b = planes
    on_a, on_b = RecordingTarget(), RecordingTarget()
    plane_a.register("session-a", on_a)
    plane_b.register("session-b", on_b)
    await _registered(redis_client, "session-a", "replica-a")
    await _registered(redis_client, "session-b", "replica-b")
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
    await _registered(redis_client, "short-lived", "replica-a")
    plane_a.unregister("short-lived")
    # Whether the registry entry is already gone or not, the answer is unknown_session.
    reply = await control.request("short-lived", "pause")
    assert reply.result == UNKNOWN_SESSION
    assert target.applied == []

    recorded = await read_stream(redis_client, keys.CONTROL_REPLIES_STREAM)
    results = [(f[b"session_id"], f[b"result"]) for _, f in recorded]
    assert results == [(b"nobody", b"unknown_session"), (b"short-lived", b"unknown_session")]
    deadline = time.monotonic() + 5
    while await redis_client.exists(keys.session_owner("short-lived")):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_a_replica_answers_for_a_session_it_no_longer_holds(
    planes: tuple[ControlPlane, ControlPlane], redis_client: Redis
) -> None:
    _, plane_b = planes
    # Registry entry left behind (e.g. the session ended a moment ago): the replica answers.
    await redis_client.set(keys.session_owner("gone"), "replica-b", ex=30)
    reply = await ControlClient(redis_client).request("gone", "pause")
    assert (reply.result, reply.replica) == (UNKNOWN_SESSION, "replica-b")
    assert plane_b.sessions == 0


async def test_invalid_parameters_and_invalid_state(
    planes: tuple[ControlPlane, ControlPlane], redis_client: Redis
) -> None:
    plane_a, _ = planes
    target = RecordingTarget()
    plane_a.register("s1", target)
    await _registered(redis_client, "s1", "replica-a")
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
    planes: tuple[ControlPlane, ControlPlane], redis_client: Redis
) -> None:
    plane_a, _ = planes
    target = RecordingTarget()
    plane_a.register("chatty", target)
    await _registered(redis_client, "chatty", "replica-a")
    control = ControlClient(redis_client)
    results = [
        (await control.request("chatty", "event", entities=[TRANSCRIPT])).result for _ in range(3)
    ]
    assert results == [APPLIED, APPLIED, RATE_LIMITED_RESULT]  # burst 2
    await asyncio.sleep(1.1)  # 1 token per second
    assert (await control.request("chatty", "event", entities=[TRANSCRIPT])).result == APPLIED

    await asyncio.sleep(1.1)
    plane_a.client_retry_after("chatty", 1.0)  # the client said 429, retryAfter 1 s
    held = await control.request("chatty", "event", entities=[TRANSCRIPT])
    assert held.result == RATE_LIMITED_RESULT
    assert held.detail is not None
    assert "retry after" in held.detail
    await asyncio.sleep(1.1)
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
    plane = ControlPlane(client, "replica-r", session_ttl=0.6, block_seconds=0.2)
    await plane.start()
    plane.register("long", RecordingTarget())
    await asyncio.sleep(1.5)  # well past one TTL
    assert await client.get(keys.session_owner("long")) == b"replica-r"
    await plane.stop()  # deregisters what is still live
    assert not await client.exists(keys.session_owner("long"))
    await client.aclose()
