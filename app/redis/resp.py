"""Commands in RESP, and pipelined round trips of them on a redis-py connection."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.redis.client import RedisClient

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
    of the pool, and without a socket timeout: one asyncio timeout covers each round trip.
    A pool checkout per round trip (redis-py probes the socket on every checkout) and
    redis-py's timed write (a task per write) cost more than a batch's own work. Redis
    Cluster: a pipeline of the client per round trip."""

    __slots__ = ("_client", "_connection")

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self._connection: Any = None

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
        return await connection.retry.call_with_retry(  # type: ignore[no-any-return]
            lambda: _round_trip(connection, commands, read_timeout),
            lambda error: connection.disconnect(),
        )

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.disconnect()
            self._connection = None


async def _round_trip(connection: Any, commands: list[Any], read_timeout: float) -> list[Any]:
    # Nothing awaits inside an `except` block of a compiled module (docs/architecture.md).
    try:
        async with asyncio.timeout(read_timeout):
            await connection.send_packed_command(pack_commands(commands))
            return await _read_replies(connection, len(commands))
    except TimeoutError as exc:
        timed_out = exc
    await connection.disconnect()  # replies still in flight: the socket is out of step
    raise RedisTimeoutError("timeout in a pipelined round trip") from timed_out


async def _read_replies(connection: Any, count: int) -> list[Any]:
    """`count` replies, Redis error replies as ResponseError objects.

    With hiredis (a dependency), the replies are taken from redis-py's hiredis reader in one
    loop: an awaited `read_response()` per reply (a coroutine and its checks for each audio
    frame) cost more than writing the frame. Without it, one `read_response()` per reply."""
    parser = connection._parser
    if not isinstance(parser, _AsyncHiredisParser):
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(await connection.read_response(timeout=math.inf))
            except ResponseError as exc:
                replies.append(exc)
        return replies
    # Made by redis-py on connect: the hiredis reader (with redis-py's error classes) and the
    # stream it reads from. Untyped on purpose: redis-py declares `_reader` as None, and a
    # compiled build checks the declared type of what it reads.
    hiredis_parser: Any = parser
    reader: Any = hiredis_parser._reader
    read_more: Callable[[], Awaitable[bool]] = hiredis_parser.read_from_socket
    replies = []
    try:
        while len(replies) < count:
            reply = reader.gets()
            if reply is NOT_ENOUGH_DATA:
                await read_more()
            elif isinstance(reply, RedisConnectionError):
                raise reply
            else:
                replies.append(reply)
    except RedisConnectionError as exc:
        failure: RedisConnectionError = exc
    except OSError as exc:
        failure = RedisConnectionError(f"error reading from redis: {exc}")
        failure.__cause__ = exc
    else:
        return replies
    await connection.disconnect()  # outside the `except` blocks, as in _round_trip
    raise failure
