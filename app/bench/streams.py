"""What the bench reads back from Redis: entry arrival times (ingest latency) and entry counts.

Session streams use explicit ids `1-0`, `2-0`, ... (app/publisher/schema.py), so an entry id
carries no time. Ingest latency is therefore observed from outside: a separate process
(`ArrivalSampler`, off the load generator's event loop) blocks in XREAD on a sample of the
session streams and stamps each entry with time.time() when Redis hands it over. For a call
with no pauses, entry `1-0` is the `opened` event and audio frame k is entry `k+1`, so
latency = arrival of entry k+1 - the client's time.time() when it wrote frame k. This is an
upper bound of client send -> XADD: it includes the XREAD wake-up and the sampler's own
scheduling, a fraction of a millisecond on an idle core.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio

from app.redis import keys

Arrivals = dict[str, list[tuple[int, float]]]  # session id -> [(entry number, time.time())]


def _sample(
    redis_url: str,
    session_ids: Sequence[str],
    cpus: set[int] | None,
    stop: multiprocessing.synchronize.Event,
    conn: multiprocessing.connection.Connection,
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    client = redis.Redis.from_url(redis_url)
    last: dict[str, bytes | str] = {keys.audio_stream(s): "0-0" for s in session_ids}
    by_key = {keys.audio_stream(s): s for s in session_ids}
    arrivals: Arrivals = {s: [] for s in session_ids}
    conn.send("ready")
    while not stop.is_set():
        reply: Any = client.xread(last, block=100)  # type: ignore[arg-type]
        now = time.time()
        for key, entries in reply or []:
            name = key.decode()
            found = arrivals[by_key[name]]
            for entry_id, _fields in entries:
                found.append((int(entry_id.split(b"-")[0]), now))
            last[name] = entries[-1][0]
    conn.send(arrivals)
    client.close()


class ArrivalSampler:
    """Stamps the arrival of every entry of the given sessions' streams, in another process."""

    def __init__(self, redis_url: str, session_ids: Sequence[str], cpus: set[int] | None) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._conn, child = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_sample,
            args=(redis_url, list(session_ids), cpus, self._stop, child),
            daemon=True,
        )

    def start(self) -> None:
        self._process.start()
        if not self._conn.poll(30) or self._conn.recv() != "ready":
            raise RuntimeError("stream sampler did not start")

    def stop(self) -> Arrivals:
        self._stop.set()
        arrivals: Arrivals = self._conn.recv() if self._conn.poll(30) else {}
        self._process.join(10)
        return arrivals


@dataclass(frozen=True, slots=True)
class StreamCount:
    session_id: str
    entries: int  # XLEN
    last_entry: int  # number of the newest entry id (== entries unless trimmed)
    closed: bool  # newest entry is the `closed` event
    frames_lost: int | None  # as reported by the gateway in `closed`

    @property
    def audio_frames(self) -> int:
        """Entries minus the `opened` and `closed` events (a call without pauses)."""
        return self.entries - 1 - (1 if self.closed else 0)


async def count_entries(
    client: redis.asyncio.Redis, session_ids: Sequence[str], *, wait_seconds: float = 15.0
) -> list[StreamCount]:
    """Count every session's stream, waiting (up to `wait_seconds`) for its `closed` event."""
    deadline = time.monotonic() + wait_seconds
    while True:
        counts = await _count_once(client, session_ids)
        if all(c.closed for c in counts) or time.monotonic() >= deadline:
            return counts
        await asyncio.sleep(0.2)


async def _count_once(client: redis.asyncio.Redis, session_ids: Sequence[str]) -> list[StreamCount]:
    counts: list[StreamCount] = []
    for start in range(0, len(session_ids), 500):
        chunk = session_ids[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for session_id in chunk:
            key = keys.audio_stream(session_id)
            pipe.xlen(key)
            pipe.xrevrange(key, count=1)
        replies: list[Any] = await pipe.execute()
        for index, session_id in enumerate(chunk):
            length, newest = replies[2 * index], replies[2 * index + 1]
            last_entry, closed, lost = 0, False, None
            if newest:
                entry_id, fields = newest[0]
                last_entry = int(entry_id.split(b"-")[0])
                closed = fields.get(b"type") == b"closed"
                if closed:
                    lost = int(orjson.loads(fields[b"data"]).get("frames_lost", 0))
            counts.append(StreamCount(session_id, int(length), last_entry, closed, lost))
    return counts
