"""Audio entries packed as they are queued are the very bytes the generic packing gives."""

from __future__ import annotations

from itertools import chain

import redis.asyncio

from app.config import Settings
from app.publisher.publisher import Publisher, SessionInfo
from app.publisher.session_queue import QueuedAudio
from app.redis.resp import pack_commands


async def test_a_queued_frame_is_packed_as_its_xadd() -> None:
    client = redis.asyncio.Redis.from_url("redis://127.0.0.1:1")  # never connected here
    settings = Settings(redis_url="redis://127.0.0.1:1", audio_stream_maxlen=1234)
    publisher = Publisher(client, settings)
    info = SessionInfo(
        session_id="e7f3c8a0-0000-4000-8000-000000000001",
        correlation_id="c",
        integration="test",
        organization_id="o",
        conversation_id="v",
        is_probe=False,
        media=None,
    )
    session = publisher.open_session(info, on_failure=lambda: None)
    for offset, data in ((0, bytes(range(256)) * 12), (1536, b""), (1536, b"\r\n$5\r\n" * 3)):
        assert session.audio(data, offset, len(data) // 2, 0.0)
        item = session.queue[-1]
        assert isinstance(item, QueuedAudio)
        args = ("XADD", session.stream_key, b"MAXLEN", b"~", b"1234", item.entry_id,
                *chain.from_iterable(item.fields.items()))  # fmt: skip
        assert item.command is not None
        assert item.command + data + b"\r\n" == pack_commands([args])[0]
    await client.aclose()
