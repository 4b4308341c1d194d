"""The publisher's pipelined round trips against a real redis-server: every reply, in order,
error replies as objects of redis-py's classes, a dropped connection reported and redone, and
a stalled server answered with a timeout."""

from __future__ import annotations

import asyncio
import gc

import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.redis.client import close_redis, create_redis
from app.redis.embedded import EmbeddedRedis
from app.redis.resp import PipelineConnection
from tests.support.redis_servers import redis_stalled
from tests.support.streams import streams_settings

Redis = redis.asyncio.Redis


async def test_replies_of_a_batch_larger_than_one_read_come_back_in_order(
    redis_client: Redis,
) -> None:
    await redis_client.set("pipeline:text", "not a stream")
    commands: list[object] = []
    for index in range(3_000):
        # A 4 KB entry each: the replies of the batch arrive over several socket reads.
        commands.append(("XADD", "pipeline:stream", f"{index + 1}-0", "audio", b"\x7f" * 4096))
        if index % 1000 == 0:
            commands.append(("XADD", "pipeline:text", "*", "field", "value"))  # WRONGTYPE
    connection = PipelineConnection(redis_client)
    try:
        replies = await connection.execute(commands, 10.0)
    finally:
        await connection.close()

    assert len(replies) == len(commands)
    errors = [reply for reply in replies if isinstance(reply, Exception)]
    assert len(errors) == 3
    assert all(type(error) is ResponseError and "WRONGTYPE" in str(error) for error in errors)
    ids = [reply for reply in replies if not isinstance(reply, Exception)]
    assert ids == [b"%d-0" % (index + 1) for index in range(3_000)]
    assert await redis_client.xlen("pipeline:stream") == 3_000


async def test_an_id_already_in_the_stream_is_answered_as_an_error_object(
    redis_client: Redis,
) -> None:
    connection = PipelineConnection(redis_client)
    try:
        replies = await connection.execute(
            [("XADD", "pipeline:dup", "5-0", "a", "1"), ("XADD", "pipeline:dup", "5-0", "a", "1")],
            5.0,
        )
    finally:
        await connection.close()
    assert replies[0] == b"5-0"
    assert isinstance(replies[1], ResponseError)
    assert "equal or smaller" in str(replies[1])


async def test_a_killed_connection_is_dropped_and_the_round_trip_redone_on_a_new_one(
    redis_client: Redis, redis_url: str
) -> None:
    client = create_redis(streams_settings(), redis_url)
    connection = PipelineConnection(client)
    try:
        first = await connection.execute([("CLIENT", "ID")], 60.0)
        killed = await redis_client.execute_command("CLIENT", "KILL", "ID", first[0])
        assert killed == 1
        # The server closed the connection between round trips: the next one does not wait
        # out its 60 s read timeout, it goes on a new connection (made first if the close has
        # been read, or by the retry after the failure if not).
        async with asyncio.timeout(10):
            second = await connection.execute([("CLIENT", "ID"), ("PING",)], 60.0)
        assert second[1] == b"PONG"
        assert second[0] != first[0]
    finally:
        await connection.close()
        await close_redis(client)


async def test_a_round_trip_cut_off_midway_is_redone_once_then_the_error_is_the_callers(
    own_redis: EmbeddedRedis,
) -> None:
    # Redis answers the first command of the batch, then closes the connection (a client that
    # kills itself is closed after that reply; the rest of its batch is not run).
    client = create_redis(streams_settings(), own_redis.url)
    connection = PipelineConnection(client)
    try:
        own = (await connection.execute([("CLIENT", "ID")], 5.0))[0]
        kill_own = ("CLIENT", "KILL", "ID", own, "SKIPME", "no")
        replies = await connection.execute([kill_own, ("ECHO", "redone")], 5.0)
        assert replies == [0, b"redone"]  # the run that was cut off killed its own connection
        # Cut off on the new connection as well: the clients' policy retries once, no more.
        kill_all = ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no")
        with pytest.raises(RedisConnectionError):
            async with asyncio.timeout(10):
                await connection.execute([kill_all, ("PING",)], 5.0)
    finally:
        await connection.close()
        await close_redis(client)


async def test_a_stalled_server_times_the_round_trip_out_and_a_new_connection_follows(
    own_redis: EmbeddedRedis,
) -> None:
    # A long connect timeout: closing the socket must not wait it out for the unsent batch.
    client = create_redis(streams_settings(redis_timeout_seconds=30.0), own_redis.url)
    connection = PipelineConnection(client)
    # Far more than the sockets hold: the writes stop (the transport pauses) before the
    # replies' wait, and the timeout still ends the round trip, at once.
    batch: list[object] = [("XADD", "pipeline:stall", "*", "audio", b"\x7f" * 65_536)] * 400
    try:
        first = await connection.execute([("CLIENT", "ID")], 5.0)
        with redis_stalled(own_redis), pytest.raises(RedisTimeoutError):
            async with asyncio.timeout(10):  # not the connect timeout's 30 s
                await connection.execute(batch, 0.5)
        replies = await connection.execute([("CLIENT", "ID"), ("XLEN", "pipeline:stall")], 5.0)
        assert replies[0] != first[0]  # the stalled connection was dropped
    finally:
        await connection.close()
        await close_redis(client)


async def test_each_round_trip_is_held_to_its_own_deadline(
    redis_client: Redis, redis_url: str
) -> None:
    """One timer keeps the deadlines of a connection's round trips (app/redis/resp.py)."""
    client = create_redis(streams_settings(), redis_url)
    connection = PipelineConnection(client)
    try:
        first = await connection.execute([("CLIENT", "ID")], 0.6)
        await asyncio.sleep(0.4)
        # Answered after the first round trip's deadline, within its own: not timed out (and
        # redone on a new connection).
        replies = await connection.execute([("DEBUG", "SLEEP", "0.4"), ("CLIENT", "ID")], 0.6)
        assert replies == [b"OK", first[0]]
        await asyncio.sleep(0.3)  # past that deadline: nothing waits, the timer is gone
        await connection.execute([("PING",)], 60.0)  # the timer set a minute ahead
        # A deadline sooner than the one the timer is set for (the round trip before's): the
        # round trip fails at its own, not a minute later.
        with pytest.raises(RedisTimeoutError):
            async with asyncio.timeout(10):
                await connection.execute([("DEBUG", "SLEEP", "1")], 0.3)
        await asyncio.sleep(1.5)  # the server done sleeping: the round trips after go on
        replies = await connection.execute([("CLIENT", "ID"), ("ECHO", "after")], 5.0)
        assert replies[1] == b"after"
        assert replies[0] != first[0]  # the timed-out connection was dropped
    finally:
        await connection.close()
        await close_redis(client)


async def test_a_batch_that_cannot_be_packed_leaves_no_round_trip_behind(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = create_redis(streams_settings(), redis_url)
    connection = PipelineConnection(client)
    try:
        first = await connection.execute([("CLIENT", "ID")], 5.0)
        with pytest.raises(TypeError):
            await connection.execute([("ECHO", 1.5)], 0.2)  # a float: not a Redis argument
        await asyncio.sleep(0.4)  # past that call's deadline
        gc.collect()
        assert "never retrieved" not in caplog.text  # no future failed with nobody waiting
        replies = await connection.execute([("CLIENT", "ID")], 5.0)
        assert replies == first  # nothing was sent: the connection is still in step
    finally:
        await connection.close()
        await close_redis(client)


async def test_a_reply_nobody_waits_for_closes_the_socket_and_the_next_round_trip_reconnects(
    redis_client: Redis, redis_url: str
) -> None:
    """A caller gave up on a round trip (cancelled it) while Redis was still working on it:
    its reply, whether it arrives before the next round trip or during it, must not be read
    as the next round trip's."""
    client = create_redis(streams_settings(), redis_url)
    connection = PipelineConnection(client)
    try:
        ids = [(await connection.execute([("CLIENT", "ID")], 5.0))[0]]
        for wait_for_the_stale_reply in (0.0, 0.5):
            slow = asyncio.create_task(connection.execute([("DEBUG", "SLEEP", "0.3")], 5.0))
            await asyncio.sleep(0.05)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            await asyncio.sleep(wait_for_the_stale_reply)  # 0.5: its "OK" has arrived
            replies = await connection.execute([("CLIENT", "ID"), ("ECHO", "mine")], 5.0)
            assert replies[1] == b"mine"
            assert replies[0] not in ids  # a new connection
            ids.append(replies[0])
    finally:
        await connection.close()
        await close_redis(client)
