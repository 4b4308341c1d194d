"""One member of a consumer group on the events stream, as the consume tool and the transcriber
run one.

Each `opened` event the member is given starts a task for its session; the entry is
acknowledged when that task has ended, so a member restarted under its name does its
unacknowledged sessions again from the start. Every other entry is acknowledged at once (the
session streams hold the events too). A session task that failed is logged and left
unacknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from redis.exceptions import RedisError, ResponseError

from app.redis import keys as redis_keys
from app.redis.client import RedisClient
from app.tasks import stop_task

T = TypeVar("T")

SessionStarter = Callable[[Mapping[bytes, bytes]], Coroutine[Any, Any, T] | None]


async def ensure_group(redis: RedisClient, group: str, start_id: str = "0") -> None:
    """Create the consumer group on the events stream (and the stream) unless it exists."""
    try:
        await redis.xgroup_create(redis_keys.EVENTS_STREAM, group, id=start_id, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def read_group(
    redis: RedisClient,
    group: str,
    consumer: str,
    read_id: bytes | str,
    block_ms: int,
    logger: logging.Logger,
) -> tuple[list[Any], bytes | str] | None:
    """One read of the events stream for a group member: its own pending entries after
    `read_id` first (at once), then new ones (">", waiting up to `block_ms`). Returns the
    entries and the id to read from next; None when Redis failed (logged, after a pause)."""
    try:
        response: Any = await redis.xreadgroup(
            group, consumer, {redis_keys.EVENTS_STREAM: read_id}, count=100,
            block=None if read_id != ">" else block_ms,
        )  # fmt: skip
    except (RedisError, OSError) as exc:
        logger.warning("events read failed", extra={"error": type(exc).__name__})
        await asyncio.sleep(0.5)
        return None
    entries: list[Any] = response[0][1] if response else []
    if read_id != ">":  # walking the pending entries: go on after the last, or to new ones
        read_id = entries[-1][0] if entries else ">"
    return entries, read_id


async def serve_sessions(
    redis: RedisClient,
    group: str,
    consumer: str,
    start: SessionStarter[T],
    finished: Callable[[T], None],
    *,
    stop: asyncio.Event,
    sessions_limit: int | None,
    block_ms: int,
    logger: logging.Logger,
) -> None:
    """Serve sessions until `stop` is set or `sessions_limit` sessions have ended.

    `start(fields)` gives the coroutine that handles the session of an events-stream entry, or
    None for an entry that is only acknowledged. `finished` gets each session's result. At the
    end, sessions still running are cancelled and stay unacknowledged.
    """
    running: dict[asyncio.Task[T], bytes] = {}  # session task -> its `opened` entry id
    sessions_done = 0
    read_id: bytes | str = "0"  # first our own unacknowledged entries, then new ones (">")
    try:
        while not stop.is_set():
            if sessions_limit is not None and sessions_done >= sessions_limit:
                break
            batch = await read_group(redis, group, consumer, read_id, block_ms, logger)
            if batch is None:
                continue
            entries, read_id = batch
            to_ack: list[bytes] = []
            for entry_id, fields in entries:
                session = start(fields) if fields else None  # no fields: trimmed meanwhile
                if session is None:
                    to_ack.append(entry_id)
                else:
                    running[asyncio.create_task(session)] = entry_id
            ended = _take_ended(running, finished, logger)
            sessions_done += len(ended)
            await _acknowledge(redis, group, to_ack + ended, logger)
        # A session can end while the last acknowledgement is out: acknowledged now, it is not
        # done again after a restart.
        await _acknowledge(redis, group, _take_ended(running, finished, logger), logger)
    finally:
        for task in running:
            await stop_task(task)


def _take_ended(
    running: dict[asyncio.Task[T], bytes], finished: Callable[[T], None], logger: logging.Logger
) -> list[bytes]:
    """Remove the ended session tasks from `running`; the `opened` ids of those that succeeded
    (their results handed to `finished`). A failed one is logged, its entry left pending."""
    succeeded: list[bytes] = []
    for task in [t for t in running if t.done()]:
        entry_id = running.pop(task)
        error = task.exception()
        if error is not None:
            logger.error(
                "session failed; its `opened` entry stays pending for a restart",
                extra={"error": type(error).__name__}, exc_info=error,
            )  # fmt: skip
            continue
        finished(task.result())
        succeeded.append(entry_id)
    return succeeded


async def _acknowledge(
    redis: RedisClient, group: str, entry_ids: list[bytes], logger: logging.Logger
) -> None:
    if not entry_ids:
        return
    try:
        await redis.xack(redis_keys.EVENTS_STREAM, group, *entry_ids)
    except (RedisError, OSError) as exc:  # they are delivered again after a restart
        logger.warning(
            "acknowledgement failed",
            extra={"error": type(exc).__name__, "entries": len(entry_ids)},
        )
