"""Publisher while Redis goes away: bounded backlog, in-order drain, overflow ends one session."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio

from app.protocol.media import MediaFormat
from app.publisher.publisher import Publisher
from app.redis import keys
from app.redis.embedded import EmbeddedRedis
from app.redis.resp import PipelineConnection
from app.tools.consume import reassemble
from tests.support.redis_servers import redis_outage, redis_stalled
from tests.support.streams import (
    MONO,
    STEREO,
    audio_frames,
    metric,
    read_stream,
    session_info,
    streams_settings,
)

FRAME_SAMPLES = 160  # 20 ms


async def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_three_second_outage_loses_nothing_and_keeps_order(own_redis: EmbeddedRedis) -> None:
    client = redis.asyncio.Redis.from_url(own_redis.url)
    media = MediaFormat("PCMU", STEREO)
    settings = streams_settings(publish_backlog_seconds=10, publish_retry_max_seconds=0.3)
    publisher = Publisher(client, settings, health_interval=0.1)
    await publisher.start()
    info = session_info(media, integration="outage")
    overflows: list[int] = []
    session = publisher.open_session(info, lambda: overflows.append(1))
    session.event("opened", {})
    frames = audio_frames(media, frames=300, samples=FRAME_SAMPLES)  # 6 s of audio
    reconnects_before = metric("audiohook_redis_reconnects_total")
    seen_not_ready = False

    async def stream_in_real_time() -> None:
        start = time.monotonic()
        for n, frame in enumerate(frames):
            assert session.audio(frame, n * FRAME_SAMPLES, FRAME_SAMPLES, time.monotonic())
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))

    producer = asyncio.create_task(stream_in_real_time())
    await asyncio.sleep(1.0)
    async with redis_outage(own_redis):
        outage_started = time.monotonic()
        while time.monotonic() - outage_started < 3.0:
            seen_not_ready = seen_not_ready or not publisher.ready
            await asyncio.sleep(0.05)
        backlog_during_outage = publisher.backlog_frames
    await producer
    session.close("end", {"frames": len(frames)})
    assert await publisher.flush(15)
    await publisher.stop(flush_timeout=1)

    assert seen_not_ready
    assert backlog_during_outage >= 100  # about 3 s of 20 ms frames were held back
    assert publisher.ready
    assert overflows == []
    assert session.frames_lost == 0
    assert metric("audiohook_redis_reconnects_total") > reconnects_before
    await client.aclose()
    # A new client: the publisher writes on connections of its own, and this client's pooled
    # connection died with the restarted server.
    async with redis.asyncio.Redis.from_url(own_redis.url) as reader:
        entries = await read_stream(reader, keys.audio_stream(info.session_id))
        assert [e[0] for e in entries] == [b"%d-0" % n for n in range(1, 303)]
        assert reassemble(entries, media, session_id=info.session_id) == b"".join(frames)


async def test_outage_past_the_bound_ends_only_the_overflowing_session(
    own_redis: EmbeddedRedis,
) -> None:
    client = redis.asyncio.Redis.from_url(own_redis.url)
    media = MediaFormat("L16", MONO)
    settings = streams_settings(publish_backlog_seconds=1.0, publish_retry_max_seconds=0.2)
    publisher = Publisher(client, settings, health_interval=0.1)
    await publisher.start()
    busy_info = session_info(media, integration="overflow-busy")
    calm_info = session_info(media, integration="overflow-calm")
    overflows: list[str] = []
    busy = publisher.open_session(busy_info, lambda: overflows.append("busy"))
    calm = publisher.open_session(calm_info, lambda: overflows.append("calm"))
    lost_before = metric("audiohook_frames_lost_total", {"integration": "overflow-busy"})
    frames = audio_frames(media, frames=80, samples=FRAME_SAMPLES)  # 1.6 s of audio

    async with redis_outage(own_redis):
        await _wait_for(lambda: not publisher.ready)
        accepted = [
            busy.audio(frame, n * FRAME_SAMPLES, FRAME_SAMPLES, time.monotonic())
            for n, frame in enumerate(frames)
        ]
        for n, frame in enumerate(frames[:10]):  # 0.2 s: within its bound
            assert calm.audio(frame, n * FRAME_SAMPLES, FRAME_SAMPLES, time.monotonic())
        assert publisher.ready is False

    assert accepted == [True] * 50 + [False] * 30  # 50 frames = 1 s fit the bound
    assert overflows == ["busy"]  # called once, for that session only
    assert busy.frames_lost == 30
    lost = metric("audiohook_frames_lost_total", {"integration": "overflow-busy"}) - lost_before
    assert lost == 30
    busy.close("error", {})
    calm.close("end", {})
    assert await publisher.flush(10)
    assert publisher.ready

    # The calm session lost nothing; the busy one kept the audio accepted before the overflow.
    calm_entries = await read_stream(client, keys.audio_stream(calm_info.session_id))
    assert reassemble(calm_entries, media, session_id=calm_info.session_id) == b"".join(frames[:10])
    busy_entries = await read_stream(client, keys.audio_stream(busy_info.session_id))
    assert reassemble(busy_entries, media, session_id=busy_info.session_id) == b"".join(frames[:50])
    closed = busy_entries[-1][1]
    assert closed[b"type"] == b"closed"
    assert b'"frames_lost":30' in closed[b"data"]

    # A new session after Redis came back works normally.
    fresh_info = session_info(media)
    fresh = publisher.open_session(fresh_info, lambda: overflows.append("fresh"))
    for n, frame in enumerate(frames):
        assert fresh.audio(frame, n * FRAME_SAMPLES, FRAME_SAMPLES, time.monotonic())
        if n % 20 == 19:
            assert await publisher.flush(10)
    fresh.close("end", {})
    await publisher.stop(flush_timeout=10)
    fresh_entries = await read_stream(client, keys.audio_stream(fresh_info.session_id))
    assert reassemble(fresh_entries, media, session_id=fresh_info.session_id) == b"".join(frames)
    assert overflows == ["busy"]
    await client.aclose()


async def test_stop_counts_audio_it_could_not_write(own_redis: EmbeddedRedis) -> None:
    client = redis.asyncio.Redis.from_url(own_redis.url)
    media = MediaFormat("PCMU", MONO)
    publisher = Publisher(client, streams_settings(publish_retry_max_seconds=0.1))
    await publisher.start()
    session = publisher.open_session(session_info(media, integration="stop-lost"), lambda: None)
    async with redis_outage(own_redis):
        for n in range(5):
            session.audio(bytes(160), n * 160, 160, time.monotonic())
        started = time.monotonic()
        await publisher.stop(flush_timeout=0.5)
        assert time.monotonic() - started >= 0.5
    assert session.frames_lost == 5
    assert metric("audiohook_frames_lost_total", {"integration": "stop-lost"}) == 5
    await client.aclose()


async def test_a_write_that_waited_out_a_stall_does_not_count_as_slow_redis(
    own_redis: EmbeddedRedis,
) -> None:
    """The load shedder's Redis signal is for a Redis that answers slowly. A write retried
    while Redis was frozen and answered once it resumed waited out an outage (readiness's
    business): counted, it would keep new calls refused after readiness is back."""
    client = redis.asyncio.Redis.from_url(own_redis.url)
    settings = streams_settings(redis_timeout_seconds=1.0, publish_retry_max_seconds=0.02)
    publisher = Publisher(client, settings, health_interval=0.1)
    await publisher.start()
    info = session_info(MediaFormat("PCMU", MONO), integration="stall-signal")
    session = publisher.open_session(info, lambda: None)
    in_flight = publisher._round_trips_sent_at  # when each write now out was sent
    with redis_stalled(own_redis):
        session.audio(bytes(160), 0, 160, time.monotonic())
        await _wait_for(lambda: not publisher.ready)  # the first write timed out
        # Resume Redis while a retry sent after that has been out for half a second.
        await _wait_for(lambda: in_flight and time.monotonic() - in_flight[0] > 0.5)
        assert publisher.take_round_trip_seconds() == 0.0  # while down: readiness's business
    await _wait_for(lambda: publisher.ready)
    assert await publisher.flush(5)
    assert session.frames_lost == 0
    assert publisher.take_round_trip_seconds() < 0.2
    session.close("end", {})
    await publisher.stop(flush_timeout=5)
    await client.aclose()


async def test_a_stall_after_the_second_writers_batch_is_still_noticed(
    own_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The health-checking writer finds the last entries out with the other writer and waits;
    once both are idle and Redis stalls, its check must still come round."""
    # The first round trip (the health-checking writer's, which wakes first) is back before
    # the second: Redis itself would answer two connections in no fixed order.
    execute = PipelineConnection.execute
    delays = [0.3, 0.6]

    async def held_back(self: PipelineConnection, commands: list[Any], timeout: float) -> Any:
        if delays:
            await asyncio.sleep(delays.pop(0))
        return await execute(self, commands, timeout)

    monkeypatch.setattr(PipelineConnection, "execute", held_back)
    client = redis.asyncio.Redis.from_url(own_redis.url)
    publisher = Publisher(client, streams_settings(), health_interval=0.2)
    await publisher.start()
    media = MediaFormat("PCMU", MONO)
    sessions = [publisher.open_session(session_info(media), lambda: None) for _ in range(2)]
    try:
        assert sessions[0].audio(bytes(160), 0, 160, time.monotonic())
        await asyncio.sleep(0.05)  # the second entry goes with the other writer
        assert sessions[1].audio(bytes(160), 0, 160, time.monotonic())
        await _wait_for(lambda: all(session.frames_published == 1 for session in sessions))
        await asyncio.sleep(0.3)  # both writers idle
        assert publisher.ready
        with redis_stalled(own_redis):
            await _wait_for(lambda: not publisher.ready, timeout=5)
    finally:
        await publisher.stop(flush_timeout=1)
        await client.aclose()
