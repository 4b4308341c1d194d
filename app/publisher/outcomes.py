"""What Redis answered for one queued entry: written, already there, retry later or refused.

An XADD retried after a lost reply is refused because its explicit id is already in the stream;
`confirm_duplicates` reads the stored entry to tell our own earlier write from a foreign one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.exceptions import (
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.redis.client import RedisClient

if TYPE_CHECKING:
    from app.publisher.session_queue import QueuedItem, SessionPublisher

# Outcome of one queued item in a batch.
OK, DUPLICATE, RETRY, FAILED = range(4)

_TRANSIENT_PREFIXES = ("OOM", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN",
                       "READONLY", "NOREPLICAS", "MOVED", "ASK")  # fmt: skip


def classify(result: object) -> int:
    if not isinstance(result, Exception):
        return OK
    if isinstance(result, (RedisConnectionError, RedisTimeoutError, BusyLoadingError)):
        return RETRY
    if isinstance(result, (OutOfMemoryError, ReadOnlyError)):
        return RETRY
    if isinstance(result, ResponseError):
        message = str(result)
        if "equal or smaller" in message:  # XADD with an id already in the stream
            return DUPLICATE
        if message.startswith(_TRANSIENT_PREFIXES):
            return RETRY
        return FAILED
    return RETRY if isinstance(result, RedisError) else FAILED


async def confirm_duplicates(
    redis: RedisClient, duplicates: list[tuple[SessionPublisher, QueuedItem]]
) -> dict[int, int]:
    """An id refused as 'already there' is ours (a retry after a lost reply) only if the
    stored entry is identical; anything else is a foreign stream with this session id.
    The verdict by id() of the item; RedisError/OSError: the read failed."""
    if not duplicates:
        return {}
    pipe = redis.pipeline(transaction=False)
    for session, item in duplicates:
        assert session.stream_key is not None
        assert item.entry_id is not None
        pipe.xrange(session.stream_key, item.entry_id, item.entry_id)
    found = await pipe.execute(raise_on_error=False)
    verdict: dict[int, int] = {}
    for (_, item), entries in zip(duplicates, found, strict=True):
        if isinstance(entries, Exception):
            verdict[id(item)] = RETRY
        elif entries and entries[0][1] == item.fields:
            verdict[id(item)] = OK
        else:
            verdict[id(item)] = FAILED
    return verdict
