"""Commands in RESP, and pipelined round trips of them on a redis-py connection."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import redis.asyncio
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.redis.client import RETRIES, RedisClient, retry_backoff

_RESP_FORMATS: dict[int, bytes] = {}


def pack_commands(commands: list[Any]) -> list[bytes]:
    """The commands (argument tuples, or lists of bytes packed already) in RESP, as bytes
    to write in order. A tuple gives one bytes object, the same bytes as redis-py's
    pack_commands() for str/bytes/int arguments, at a third of its cost (one %-format per
    command with a format cached by argument count, instead of several joins per argument)."""
    packed: list[bytes] = []
    for args in commands:
        if args.__class__ is list:  # packed already, in pieces
            packed += args
            continue
        count = len(args)
        template = _RESP_FORMATS.get(count)
        if template is None:
            template = _RESP_FORMATS[count] = b"*%d\r\n" % count + b"$%d\r\n%b\r\n" * count
        values: list[int | bytes] = []
        for arg in args:
            if arg.__class__ is str:
                arg = arg.encode()
            elif arg.__class__ is int:
                arg = b"%d" % arg
            values += (len(arg), arg)
        packed.append(template % tuple(values))
    return packed


def pack_head(total_args: int, *args: bytes | str) -> bytes:
    """The RESP of a command of `total_args` arguments up to (and with) `args`, its first
    ones: a prefix to complete with the packing of the remaining arguments."""
    head = b"*%d\r\n" % total_args
    for arg in args:
        value = arg.encode() if isinstance(arg, str) else arg
        head += b"$%d\r\n%b\r\n" % (len(value), value)
    return head


class PipelineConnection:
    """Pipelined round trips for one batch writer, on a Redis connection of its own.

    Standalone Redis: the connection is made from the client pool's settings but kept out
    of the pool, and without a socket timeout: each round trip has a deadline of its own.
    A pool checkout per round trip (redis-py probes the socket on every checkout) and
    redis-py's timed write (a task per write) cost more than a batch's own work. Once
    redis-py has connected (and authenticated), the replies are read by `_Replies` instead of
    its stream reader, which also keeps the deadlines. A failed round trip is retried by the
    clients' policy (app/redis/client.py). Redis Cluster: a pipeline of the client per round
    trip."""

    __slots__ = ("_backoff", "_client", "_connection", "_replies")

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._connection: Any = None
        self._replies: _Replies | None = None
        self._backoff = retry_backoff()

    async def execute(self, commands: list[Any], read_timeout: float) -> list[Any]:
        """Send `commands` (argument tuples; standalone Redis also takes packed pieces) in one
        pipeline; replies in order, Redis error replies as ResponseError objects."""
        client = self._client
        if not isinstance(client, redis.asyncio.Redis):
            pipe = client.pipeline(transaction=False)
            for args in commands:
                pipe.execute_command(*args)
            return await pipe.execute(raise_on_error=False)
        connection = self._connection
        if connection is None:
            pool = client.connection_pool
            # No health check either: redis-py's is a clock read per reply (each a getpid()
            # system call on Python 3.11), and a failed round trip reconnects anyway.
            settings = {
                **pool.connection_kwargs,
                "socket_timeout": None,
                "health_check_interval": 0,
            }
            connection = self._connection = pool.connection_class(**settings)
        # redis-py's Retry.call_with_retry, as it would run with the clients' policy: it is
        # interpreted code around every round trip. Nothing awaits inside an `except` block of
        # a compiled module (docs/architecture.md).
        failures = 0
        while True:
            try:
                return await self._round_trip(connection, commands, read_timeout)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                failed = exc
            failures += 1
            await connection.disconnect()
            if failures > RETRIES:
                raise failed
            await asyncio.sleep(self._backoff.compute(failures))

    async def _round_trip(
        self, connection: Any, commands: list[Any], read_timeout: float
    ) -> list[Any]:
        replies = self._replies
        try:
            if (
                replies is not None
                and replies.in_step
                and connection.is_connected
                and replies.transport is connection._writer.transport
            ):
                # The common case: no asyncio.timeout (interpreted code, and a timer of its
                # own, per round trip); the reply reader keeps the deadline.
                return await replies.request(commands, read_timeout)
            async with asyncio.timeout(read_timeout):  # connecting first
                replies = await self._connected(connection)
                if replies is None:  # no hiredis: redis-py's own reads
                    await connection.send_packed_command(pack_commands(commands))
                    return await _read_replies(connection, len(commands))
                return await replies.request(commands, read_timeout)
        except TimeoutError as exc:
            timed_out = exc
        if self._replies is not None:
            # A batch still unsent (Redis stalled) would hold the close for as long again.
            self._replies.transport.abort()
        await connection.disconnect()  # replies still in flight: the socket is out of step
        raise RedisTimeoutError("timeout in a pipelined round trip") from timed_out

    async def _connected(self, connection: Any) -> _Replies | None:
        """A reply reader installed on the connection's socket, (re)connected first; None
        without hiredis. (A socket still in step keeps its reader: `_round_trip` does not
        come here for it.)"""
        replies = self._replies
        if replies is not None and not replies.in_step and connection.is_connected:
            await connection.disconnect()  # Redis closed it, or a round trip was given up
        if not connection.is_connected:  # as redis-py's send does: the caller retries
            await connection.connect_check_health(check_health=False)
        transport = connection._writer.transport
        parser = connection._parser
        if not isinstance(parser, _AsyncHiredisParser):
            return None
        # Untyped on purpose: redis-py declares `_reader` as None, and a compiled build checks
        # the declared type of what it reads.
        hiredis_parser: Any = parser
        replies = self._replies = _Replies(hiredis_parser._reader, transport)
        return replies

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.disconnect()
            self._connection = None


class _Replies:
    """The protocol of a pipelined connection's socket once redis-py has connected it: the
    replies are parsed as they arrive, by redis-py's hiredis reader of that connection, and
    the round trip waiting for them is woken once, when the last one is in. Through redis-py's
    stream reader it was woken for every piece of the answer (Redis answers a large pipeline
    in several), each time through interpreted code.

    Whatever the socket reports besides data is passed on to redis-py's own protocol, so that
    its disconnect() closes and waits as before. A round trip given up (cancelled) leaves the
    socket out of step: the next round trip connects afresh, and data that arrives meanwhile
    closes it.

    A round trip not answered by its deadline fails with TimeoutError. One timer serves many
    round trips: set for the first one's deadline, it finds a later round trip waiting when it
    fires and is set again for that one's, and when nothing waits it stops until the next
    round trip. (A round trip whose deadline comes before the timer's sets it anew.)"""

    def __init__(self, reader: Any, transport: Any) -> None:
        self._reader = reader
        self.transport = transport
        self._redis_py_protocol: Any = transport.get_protocol()
        self._loop = asyncio.get_running_loop()
        self._expected = 0
        self._replies: list[Any] = []
        self._answered: asyncio.Future[list[Any]] | None = None
        self._deadline = 0.0  # the waiting round trip's, on the loop's clock
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._timer_deadline = 0.0  # the deadline the timer is set for
        self.lost = False  # end of stream or connection lost: the next round trip reconnects
        transport.set_protocol(self)

    def request(self, commands: list[Any], timeout: float) -> asyncio.Future[list[Any]]:
        """Send `commands`; a future for their replies, failed with TimeoutError after
        `timeout`. Packed first: commands that cannot be packed leave nothing waiting."""
        packed = pack_commands(commands)
        answered = self._expect(len(commands), timeout)
        self.transport.writelines(packed)
        return answered

    def _expect(self, count: int, timeout: float) -> asyncio.Future[list[Any]]:
        self._expected = count
        self._replies = []
        loop = self._loop
        answered: asyncio.Future[list[Any]] = loop.create_future()
        self._answered = answered
        deadline = self._deadline = loop.time() + timeout
        timer = self._deadline_timer
        if timer is None or deadline < self._timer_deadline:
            if timer is not None:
                timer.cancel()
            self._set_timer(deadline)
        return answered

    def _set_timer(self, deadline: float) -> None:
        self._timer_deadline = deadline
        self._deadline_timer = self._loop.call_at(deadline, self._deadline_reached)

    def _deadline_reached(self) -> None:
        self._deadline_timer = None
        answered = self._answered
        if answered is None or answered.done():
            return  # answered (or given up) in time: no timer until the next round trip
        if self._deadline > self._timer_deadline:  # a later round trip's: wait for its own
            self._set_timer(self._deadline)
            return
        answered.set_exception(TimeoutError("no reply from redis by the round trip's deadline"))

    @property
    def in_step(self) -> bool:
        """Open, and every round trip on it answered: the next reply is the next one's."""
        return not self.lost and self._answered is None

    def data_received(self, data: bytes) -> None:
        answered = self._answered
        if answered is None or answered.done():
            self._close()
            return
        reader = self._reader
        reader.feed(data)
        replies = self._replies
        try:
            while len(replies) < self._expected:
                reply = reader.gets()
                if reply is NOT_ENOUGH_DATA:
                    return
                if isinstance(reply, RedisConnectionError):
                    raise reply
                replies.append(reply)
        except Exception as exc:  # a protocol error: nothing after it can be trusted
            answered.set_exception(_as_connection_error(exc))
            self._close()
            return
        self._answered = None
        answered.set_result(replies)

    def eof_received(self) -> bool | None:
        self._fail("redis closed the connection")
        return self._redis_py_protocol.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("connection to redis lost")
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._redis_py_protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._redis_py_protocol.pause_writing()

    def resume_writing(self) -> None:
        self._redis_py_protocol.resume_writing()

    def _close(self) -> None:
        self.lost = True
        self.transport.close()

    def _fail(self, message: str) -> None:
        self.lost = True
        answered = self._answered
        if answered is not None and not answered.done():
            answered.set_exception(RedisConnectionError(message))


def _as_connection_error(exc: Exception) -> RedisConnectionError:
    if isinstance(exc, RedisConnectionError):
        return exc
    error = RedisConnectionError(f"error reading from redis: {exc}")
    error.__cause__ = exc
    return error


async def _read_replies(connection: Any, count: int) -> list[Any]:
    """`count` replies through redis-py (no hiredis): one read_response() per reply, Redis
    error replies as ResponseError objects."""
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await connection.read_response(timeout=math.inf))
        except ResponseError as exc:
            replies.append(exc)
    return replies
