"""A session's Redis stream as the gateway wrote it: audio entries and lifecycle events."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

from app.redis import keys
from app.redis.client import RedisClient
from tests.support.streams import StreamEntries


@dataclass
class SessionStream:
    """A session's stream entries, split into audio entries and lifecycle events."""

    ids: list[bytes] = field(default_factory=list)
    audio: list[dict[bytes, bytes]] = field(default_factory=list)
    events: list[dict[bytes, bytes]] = field(default_factory=list)

    @property
    def frames(self) -> list[bytes]:
        return [entry[b"audio"] for entry in self.audio]

    @property
    def offsets(self) -> list[int]:
        return [int(entry[b"offset"]) for entry in self.audio]

    @property
    def offsets_and_audio(self) -> list[tuple[int, bytes]]:
        return [(int(entry[b"offset"]), entry[b"audio"]) for entry in self.audio]

    @property
    def event_types(self) -> list[str]:
        return [entry[b"type"].decode() for entry in self.events]

    @property
    def closed(self) -> dict[bytes, bytes]:
        """The `closed` entry (always the stream's last)."""
        return self.events[-1]

    def event_data(self, event_type: str) -> dict[str, Any]:
        entry = next(e for e in self.events if e[b"type"] == event_type.encode())
        data = json.loads(entry[b"data"])
        assert isinstance(data, dict)
        return data


async def closed_session_stream(
    client: RedisClient, session_id: str, timeout: float = 10.0
) -> SessionStream:
    """The session's stream once its last entry is the `closed` event."""
    key = keys.audio_stream(session_id)
    deadline = time.monotonic() + timeout
    while True:
        entries = cast(StreamEntries, await client.xrange(key))
        if entries and entries[-1][1].get(b"type") == b"closed":
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"no closed entry in {key} after {timeout} s: {entries[-3:]}")
        await asyncio.sleep(0.05)
    stream = SessionStream()
    for entry_id, fields in entries:
        stream.ids.append(entry_id)
        (stream.audio if b"audio" in fields else stream.events).append(fields)
    return stream
