"""What Redis answered for one queued entry: written, already there, retry later or refused.

An XADD retried after a lost reply is refused because its explicit id is already in the stream;
`confirm_duplicates` reads the stored entry to tell our own earlier write from a foreign one.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Final

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


class Outcome(IntEnum):
    """What became of one queued item in a batch, ordered from best to worst.

    The order is relied on: an item written with several commands (an event goes to the
    session stream and the events stream) takes the worst of their outcomes, `max()`. So a
    refusal of any of them fails the item, else a transient error has it retried, else an
    "id already there" has it checked as a possible duplicate, and only all OK is written.
    The members are ints: comparing them (`==`, `max`) costs what comparing ints does.
    """

    OK = 0  # written
    DUPLICATE = 1  # its explicit id is already in the stream: ours after a retry, or foreign
    RETRY = 2  # not written for now (connection, timeout, OOM, failover...): try again
    FAILED = 3  # refused for good


OK: Final = Outcome.OK
DUPLICATE: Final = Outcome.DUPLICATE
RETRY: Final = Outcome.RETRY
FAILED: Final = Outcome.FAILED

_TRANSIENT_PREFIXES = ("OOM", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN",
                       "READONLY", "NOREPLICAS", "MOVED", "ASK")  # fmt: skip


def classify(result: object) -> Outcome:
    if type(result) is bytes:  # an entry id: the usual answer, told apart at once
        return OK
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
) -> dict[QueuedItem, Outcome]:
    """An id refused as 'already there' is ours (a retry after a lost reply) only if the
    stored entry is identical; anything else is a foreign stream with this session id.
    The verdict by item (items hash by identity); RedisError/OSError: the read failed."""
    if not duplicates:
        return {}
    pipe = redis.pipeline(transaction=False)
    for session, item in duplicates:
        assert session.stream_key is not None
        assert item.entry_id is not None
        pipe.xrange(session.stream_key, item.entry_id, item.entry_id)
    found = await pipe.execute(raise_on_error=False)
    verdict: dict[QueuedItem, Outcome] = {}
    for (_, item), entries in zip(duplicates, found, strict=True):
        if isinstance(entries, Exception):
            verdict[item] = RETRY
        elif entries and entries[0][1] == item.fields:
            verdict[item] = OK
        else:
            verdict[item] = FAILED
    return verdict
