"""Publisher against a real redis-server: round trips, order, events, expiry, probes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest
import redis.asyncio

from app.protocol.media import MediaFormat
from app.publisher.publisher import _FULL_BATCH_ENTRIES, Publisher, SessionPublisher
from app.redis import keys
from app.tools.consume import decode_event, reassemble
from tests.support.streams import (
    MONO,
    STEREO,
    TEST_KEYS,
    audio_frames,
    metric,
    read_stream,
    session_info,
    streams_settings,
)

Redis = redis.asyncio.Redis


async def _publish_call(
    session: SessionPublisher, frames: list[bytes], samples: int, start_offset: int = 0
) -> None:
    session.event("opened", {"language": "en-US"})
    offset = start_offset
    for frame in frames:
        assert session.audio(frame, offset, samples, time.monotonic())
        offset += samples
    session.close("end", {"frames": len(frames)})


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("channels", [MONO, STEREO], ids=["mono", "stereo"])
@pytest.mark.parametrize("audio_format", ["PCMU", "L16"])
async def test_round_trip_is_byte_identical(
    redis_client: Redis, audio_format: str, channels: tuple[str, ...], encrypted: bool
) -> None:
    media = MediaFormat(audio_format, channels)  # type: ignore[arg-type]
    frames = audio_frames(media, frames=40, samples=160)
    publisher = Publisher(redis_client, streams_settings())
    await publisher.start()
    info = session_info(media, encrypted=encrypted)
    session = publisher.open_session(info, on_failure=lambda: pytest.fail("overflow"))
    await _publish_call(session, frames, 160)
    await publisher.stop(flush_timeout=10)

    entries = await read_stream(redis_client, keys.audio_stream(info.session_id))
    assert len(entries) == 42  # opened + 40 frames + closed
    audio = reassemble(entries, media, session_id=info.session_id, keys=TEST_KEYS)
    assert audio == b"".join(frames)
    raw_audio = [fields for _id, fields in entries if b"audio" in fields]
    assert all((b"kid" in fields) is encrypted for fields in raw_audio)
    if encrypted:  # the stored bytes are not the audio, and every nonce is fresh
        assert all(frames[0] not in fields[b"audio"] for fields in raw_audio)
        assert len({fields[b"nonce"] for fields in raw_audio}) == len(raw_audio)
        assert reassemble(entries, media, session_id=info.session_id, keys={}) == b""


async def test_entries_keep_order_and_ids_across_interleaved_sessions(redis_client: Redis) -> None:
    media = MediaFormat("PCMU", STEREO)
    publisher = Publisher(redis_client, streams_settings(publish_batch_max=7))
    await publisher.start()
    infos = [session_info(media) for _ in range(5)]
    sessions = [publisher.open_session(info, lambda: None) for info in infos]
    for session in sessions:
        session.event("opened", {})
    for n in range(60):  # round robin, like frames arriving on five sockets
        for i, session in enumerate(sessions):
            assert session.audio(bytes([n, i]) * 80, n * 80, 80, time.monotonic())
    for session in sessions:
        session.close("end", {})
    await publisher.stop(flush_timeout=10)

    for i, info in enumerate(infos):
        entries = await read_stream(redis_client, keys.audio_stream(info.session_id))
        ids = [entry_id for entry_id, _ in entries]
        assert ids == [b"%d-0" % n for n in range(1, 63)]
        offsets = [int(fields[b"offset"]) for _, fields in entries[1:-1]]
        assert offsets == [n * 80 for n in range(60)]
        assert [fields[b"audio"][:2] for _, fields in entries[1:-1]] == [
            bytes([n, i]) for n in range(60)
        ]


async def test_events_schema_and_closed_after_audio(redis_client: Redis) -> None:
    media = MediaFormat("L16", MONO)
    publisher = Publisher(redis_client, streams_settings())
    await publisher.start()
    info = session_info(media, encrypted=True, integration="schema")
    session = publisher.open_session(info, lambda: None)
    session.event("opened", {"language": "en-US", "customConfig": {"a": 1}})
    assert session.audio(bytes(320), 0, 160, time.monotonic())
    session.event("paused", {})
    session.event("resumed", {"start": "PT0.02S", "discarded": "PT1S"})
    assert session.audio(bytes(320), 8160, 160, time.monotonic())
    session.close("end", {"frames": 2})
    assert not session.audio(bytes(320), 8320, 160, time.monotonic())  # closed
    await publisher.stop(flush_timeout=10)

    events = [decode_event(f) for _, f in await read_stream(redis_client, keys.EVENTS_STREAM)]
    assert [e["type"] for e in events] == ["opened", "paused", "resumed", "closed"]
    assert [e["seq"] for e in events] == ["1", "2", "3", "4"]
    for event in events:
        assert event["schema"] == "1"
        assert event["session_id"] == info.session_id
        assert event["conversation_id"] == info.conversation_id
        assert event["organization_id"] == info.organization_id
        assert event["correlation_id"] == info.correlation_id
        assert event["integration"] == "schema"
        assert event["probe"] is False
        assert event["time"].endswith("+00:00")
    opened, closed = events[0]["data"], events[-1]["data"]
    assert opened["media"] == {"format": "L16", "rate": 8000, "channels": ["external"]}
    assert opened["stream"] == keys.audio_stream(info.session_id)
    assert opened["encryption_key_id"] == "k1"
    assert opened["customConfig"] == {"a": 1}
    assert closed == {"reason": "end", "counts": {"frames": 2}, "frames_lost": 0,
                      "last_entry": "6-0"}  # fmt: skip

    stream = await read_stream(redis_client, keys.audio_stream(info.session_id))
    kinds = [f[b"type"].decode() if b"type" in f else "audio" for _, f in stream]
    assert kinds == ["opened", "audio", "paused", "resumed", "audio", "closed"]
    assert stream[-1][0] == b"6-0"
    assert json.loads(stream[-1][1][b"data"]) == closed


async def test_stream_expires_after_close_and_has_expiry_while_live(redis_client: Redis) -> None:
    media = MediaFormat("PCMU", MONO)
    publisher = Publisher(redis_client, streams_settings(stream_ttl_seconds=120))
    await publisher.start()
    info = session_info(media)
    session = publisher.open_session(info, lambda: None)
    session.event("opened", {})
    session.audio(bytes(160), 0, 160, time.monotonic())
    assert await publisher.flush(10)
    key = keys.audio_stream(info.session_id)
    assert 0 < await redis_client.ttl(key) <= 120  # a lost replica's streams expire too
    await redis_client.persist(key)
    session.close("end", {})
    await publisher.stop(flush_timeout=10)
    assert 0 < await redis_client.ttl(key) <= 120


async def test_probe_writes_no_stream_and_events_only_when_enabled(redis_client: Redis) -> None:
    media = MediaFormat("PCMU", STEREO)
    for publish_probe_events in (False, True):
        await redis_client.flushall()
        publisher = Publisher(
            redis_client, streams_settings(publish_probe_events=publish_probe_events)
        )
        await publisher.start()
        info = session_info(media, probe=True)
        session = publisher.open_session(info, lambda: None)
        assert session.event("opened", {})
        assert session.audio(b"", 0, 0, time.monotonic())  # accepted, not written
        assert session.event("closed", {"reason": "end", "counts": {}})  # same as close()
        assert not session.event("closed", {"reason": "end"})
        await publisher.stop(flush_timeout=10)
        assert not await redis_client.exists(keys.audio_stream(info.session_id))
        events = [decode_event(f) for _, f in await read_stream(redis_client, keys.EVENTS_STREAM)]
        if publish_probe_events:
            assert [(e["type"], e["probe"]) for e in events] == [
                ("opened", True), ("closed", True)
            ]  # fmt: skip
            assert events[0]["data"]["stream"] is None
        else:
            assert events == []


async def test_metrics_count_published_frames_and_events(redis_client: Redis) -> None:
    frames_before = metric("audiohook_frames_published_total")
    opened_before = metric("audiohook_events_published_total", {"type": "opened"})
    latency_before = metric("audiohook_publish_latency_seconds_count")
    publisher = Publisher(redis_client, streams_settings())
    await publisher.start()
    session = publisher.open_session(session_info(MediaFormat("PCMU", MONO)), lambda: None)
    session.event("opened", {})
    for n in range(10):
        session.audio(bytes(160), n * 160, 160, time.monotonic())
    session.close("end", {})
    await publisher.stop(flush_timeout=10)
    assert metric("audiohook_frames_published_total") - frames_before == 10
    assert metric("audiohook_events_published_total", {"type": "opened"}) - opened_before == 1
    assert metric("audiohook_publish_latency_seconds_count") - latency_before == 10
    assert metric("audiohook_publish_backlog_frames") == 0
    assert metric("audiohook_redis_up") == 1


async def test_a_batch_lingers_until_full_then_leaves_at_once(redis_client: Redis) -> None:
    """The writer holds a small batch for more entries (CPU: fewer round trips), but entries
    that arrive in a burst and fill a batch are written without waiting out the linger."""
    publisher = Publisher(redis_client, streams_settings(), linger_seconds=60.0)
    await publisher.start()
    info = session_info(MediaFormat("PCMU", MONO))
    session = publisher.open_session(info, lambda: None)
    stream = keys.audio_stream(info.session_id)
    await asyncio.sleep(0.1)  # the writers found nothing to write and wait
    session.event("opened", {})
    await asyncio.sleep(0.3)  # both woke for it and now linger for a minute
    assert await redis_client.xlen(stream) == 0
    for n in range(_FULL_BATCH_ENTRIES - 1):  # with `opened`, a full batch
        assert session.audio(bytes(160), n * 160, 160, time.monotonic())
    deadline = time.monotonic() + 10
    while await redis_client.xlen(stream) < _FULL_BATCH_ENTRIES:
        assert time.monotonic() < deadline, "a full batch waited for the linger"
        await asyncio.sleep(0.02)
    await publisher.stop(flush_timeout=1)
    assert await redis_client.xlen(stream) == _FULL_BATCH_ENTRIES


async def test_open_session_rejects_live_duplicate_and_unknown_key(redis_client: Redis) -> None:
    publisher = Publisher(redis_client, streams_settings())
    info = session_info(MediaFormat("PCMU", MONO))
    publisher.open_session(info, lambda: None)
    with pytest.raises(ValueError, match="already"):
        publisher.open_session(info, lambda: None)
    other = dataclasses.replace(session_info(MediaFormat("PCMU", MONO)), encryption_key_id="x")
    with pytest.raises(ValueError, match="not configured"):
        publisher.open_session(other, lambda: None)


async def test_an_entry_this_session_already_wrote_counts_as_published(
    redis_client: Redis,
) -> None:
    """A retry after a lost reply finds its own entry (same id, same fields): published once,
    not lost and not failed."""
    info = session_info(MediaFormat("PCMU", MONO))
    key = keys.audio_stream(info.session_id)
    frame = bytes(range(160))
    await redis_client.xadd(key, {"offset": "0", "samples": "160", "audio": frame}, id="1-0")
    failures: list[int] = []
    publisher = Publisher(redis_client, streams_settings())
    await publisher.start()
    session = publisher.open_session(info, lambda: failures.append(1))
    session.audio(frame, 0, 160, time.monotonic())
    await publisher.flush(10)
    await publisher.stop(flush_timeout=1)
    assert failures == []
    assert (session.frames_lost, session.frames_published) == (0, 1)
    assert await redis_client.xlen(key) == 1


async def test_foreign_stream_with_same_session_id_fails_the_session(redis_client: Redis) -> None:
    """Entry ids make retries idempotent; a stream left by someone else must not swallow audio."""
    info = session_info(MediaFormat("PCMU", MONO))
    key = keys.audio_stream(info.session_id)
    await redis_client.xadd(key, {"offset": "0", "samples": "1", "audio": b"x"}, id="5-0")
    failures: list[int] = []
    publisher = Publisher(redis_client, streams_settings())
    await publisher.start()
    session = publisher.open_session(info, lambda: failures.append(1))
    session.audio(bytes(160), 0, 160, time.monotonic())
    await publisher.flush(10)
    await publisher.stop(flush_timeout=1)
    assert failures == [1]
    assert session.frames_lost == 1
    assert await redis_client.xlen(key) == 1


async def test_each_reply_of_a_batch_goes_to_its_own_entry(redis_client: Redis) -> None:
    """One round trip for three sessions: an event (two XADDs) and each stream's first EXPIRE
    come before the audio of a session whose stream is foreign. Its refusal must fail that
    session, and no other."""
    media = MediaFormat("PCMU", MONO)
    infos = [session_info(media) for _ in range(3)]
    foreign = keys.audio_stream(infos[1].session_id)
    await redis_client.xadd(foreign, {"offset": "0", "samples": "1", "audio": b"x"}, id="5-0")
    failed: list[int] = []
    publisher = Publisher(redis_client, streams_settings())
    await publisher.start()
    sessions = [
        publisher.open_session(info, lambda number=number: failed.append(number))
        for number, info in enumerate(infos)
    ]
    # Queued with no await in between: the writer takes all of it in one batch.
    sessions[0].event("opened", {"language": "en-US"})
    for session in sessions[1:]:
        for offset in range(0, 480, 160):
            assert session.audio(bytes(160), offset, 160, time.monotonic())
    await publisher.flush(10)
    await publisher.stop(flush_timeout=1)

    assert failed == [1]
    assert [session.frames_published for session in sessions] == [0, 0, 3]
    assert sessions[1].frames_lost == 3
    opened = await read_stream(redis_client, keys.audio_stream(infos[0].session_id))
    assert len(opened) == 1
    assert await redis_client.xlen(keys.audio_stream(infos[2].session_id)) == 3


async def test_an_entry_queued_while_the_writers_are_idle_wakes_them(redis_client: Redis) -> None:
    """Idle writers wait for entries, not for their next health check (a minute off here)."""
    info = session_info(MediaFormat("PCMU", MONO))
    publisher = Publisher(redis_client, streams_settings(), health_interval=60.0)
    await publisher.start()
    session = publisher.open_session(info, lambda: pytest.fail("overflow"))
    key = keys.audio_stream(info.session_id)
    try:
        for number in range(3):
            await asyncio.sleep(0.2)  # both writers idle again
            assert session.audio(bytes(160), number * 160, 160, time.monotonic())
            async with asyncio.timeout(5):  # no flush(): it would wake them itself
                while await redis_client.xlen(key) < number + 1:
                    await asyncio.sleep(0.01)
    finally:
        await publisher.stop(flush_timeout=1)
