"""The consume tool against a real Redis: WAV files and sidecars from published sessions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import time
import wave
from pathlib import Path
from typing import Any

import redis.asyncio
from redis.exceptions import ResponseError

from app.protocol.media import MediaFormat
from app.publisher.publisher import Publisher, SessionInfo
from app.redis import keys as redis_keys
from app.tools.consume import add_arguments, main, run_consumer
from app.tools.wav import WAVE_FORMAT_MULAW, WAVE_FORMAT_PCM, read_wav, ulaw_decode_byte
from tests.support.streams import (
    MONO,
    STEREO,
    TEST_KEYS,
    TEST_KEYS_JSON,
    audio_frames,
    session_info,
    streams_settings,
)

Redis = redis.asyncio.Redis


async def _publish(
    publisher: Publisher, info: SessionInfo, frames: list[bytes], samples: int
) -> None:
    session = publisher.open_session(info, lambda: None)
    session.event("opened", {"language": "en-US"})
    for n, frame in enumerate(frames):
        session.audio(frame, n * samples, samples, time.monotonic())
        if n == 3:
            session.event("paused", {})
            session.event("resumed", {})
    session.close("end", {"frames": len(frames)})


async def _publish_whole_calls(redis_client: Redis, calls: list[SessionInfo]) -> None:
    """Publish each of `calls` whole (`opened`, 5 frames, `closed`) and wait until written."""
    publisher = Publisher(redis_client, streams_settings())
    await publisher.start()
    for info in calls:
        assert info.media is not None
        await _publish(publisher, info, audio_frames(info.media, 5, 160), 160)
    await publisher.stop(flush_timeout=10)


async def _until_file(path: Path) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} was never written"
        await asyncio.sleep(0.02)


async def _until_pending(redis_client: Redis, group: str, count: int) -> None:
    """Wait until `group` has `count` entries delivered but not acknowledged."""
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(ResponseError):  # NOGROUP: the consumer has not started yet
            pending = await redis_client.xpending(redis_keys.EVENTS_STREAM, group)
            if pending["pending"] == count:
                return
        assert time.monotonic() < deadline, f"{group} never had {count} pending entries"
        await asyncio.sleep(0.02)


def _as_pcm16(ulaw_frames: list[bytes]) -> bytes:
    """µ-law frames as the 16-bit little-endian PCM a default recording holds."""
    ulaw = b"".join(ulaw_frames)
    return struct.pack(f"<{len(ulaw)}h", *(ulaw_decode_byte(b) for b in ulaw))


async def test_consume_writes_wav_and_sidecar_per_session(
    redis_client: Redis, tmp_path: Path
) -> None:
    publisher = Publisher(redis_client, streams_settings(publish_probe_events=True))
    await publisher.start()
    pcmu = MediaFormat("PCMU", ("internal", "external"))
    l16 = MediaFormat("L16", MONO)
    pcmu_info = session_info(pcmu, encrypted=True)
    l16_info = session_info(l16)
    pcmu_frames = audio_frames(pcmu, 25, 160, seed=3)
    l16_frames = audio_frames(l16, 25, 160, seed=4)
    await _publish(publisher, pcmu_info, pcmu_frames, 160)
    probe = publisher.open_session(session_info(pcmu, probe=True), lambda: None)
    probe.event("opened", {})
    probe.close("end", {})
    await _publish(publisher, l16_info, l16_frames, 160)
    await publisher.stop(flush_timeout=10)

    recordings = await asyncio.wait_for(
        run_consumer(redis_client, tmp_path, group="g", consumer="c1", keys=TEST_KEYS,
                     sessions_limit=2, block_seconds=0.1),
        timeout=20,
    )  # fmt: skip
    assert sorted(r.session_id for r in recordings) == sorted(
        [pcmu_info.session_id, l16_info.session_id]
    )
    assert all(r.complete for r in recordings)

    # PCMU is recorded as 16-bit PCM by default: Python's `wave` (like most players) opens it.
    with wave.open(str(tmp_path / f"{pcmu_info.session_id}.wav"), "rb") as played:
        assert (played.getnchannels(), played.getframerate(), played.getsampwidth()) == (2, 8000, 2)
        pcm = played.readframes(played.getnframes())
    assert pcm == _as_pcm16(pcmu_frames)
    l16_wav = read_wav(tmp_path / f"{l16_info.session_id}.wav")
    assert (l16_wav.format_tag, l16_wav.channels, l16_wav.bits_per_sample) == (
        WAVE_FORMAT_PCM, 1, 16,
    )  # fmt: skip
    assert l16_wav.data == b"".join(l16_frames)

    sidecar = json.loads((tmp_path / f"{pcmu_info.session_id}.json").read_text())
    assert sidecar["session_id"] == pcmu_info.session_id
    assert sidecar["conversation_id"] == pcmu_info.conversation_id
    assert sidecar["media"] == {
        "format": "PCMU",
        "rate": 8000,
        "channels": ["internal", "external"],
    }
    assert sidecar["complete"] is True
    assert [e["type"] for e in sidecar["events"]] == ["opened", "paused", "resumed", "closed"]
    assert sidecar["events"][0]["data"]["language"] == "en-US"
    assert sidecar["audio"]["entries"] == 25
    assert sidecar["audio"]["samples"] == 25 * 160
    assert sidecar["audio"]["undecryptable"] == 0
    assert sidecar["audio"]["missing_entries"] == 0
    assert sidecar["wav"] == f"{pcmu_info.session_id}.wav"
    assert sidecar["wav_encoding"] == "pcm16"
    # Everything was acknowledged: nothing pending for the group.
    assert (await redis_client.xpending(redis_keys.EVENTS_STREAM, "g"))["pending"] == 0


async def test_consume_keeps_pcmu_as_mulaw_wav_when_asked(
    redis_client: Redis, tmp_path: Path
) -> None:
    publisher = Publisher(redis_client, streams_settings())
    await publisher.start()
    pcmu = MediaFormat("PCMU", ("internal", "external"))
    info = session_info(pcmu)
    frames = audio_frames(pcmu, 10, 160, seed=5)
    await _publish(publisher, info, frames, 160)
    await publisher.stop(flush_timeout=10)

    recordings = await asyncio.wait_for(
        run_consumer(redis_client, tmp_path, group="g", consumer="c1", keys={},
                     sessions_limit=1, block_seconds=0.1, wav_encoding="mulaw"),
        timeout=20,
    )  # fmt: skip
    assert [r.session_id for r in recordings] == [info.session_id]
    kept = read_wav(tmp_path / f"{info.session_id}.wav")
    assert (kept.format_tag, kept.channels, kept.rate, kept.bits_per_sample) == (
        WAVE_FORMAT_MULAW, 2, 8000, 8,
    )  # fmt: skip
    assert kept.data == b"".join(frames)
    sidecar = json.loads((tmp_path / f"{info.session_id}.json").read_text())
    assert sidecar["wav_encoding"] == "mulaw"


async def test_consumer_follows_a_live_session_and_stops_on_request(
    redis_client: Redis, tmp_path: Path
) -> None:
    publisher = Publisher(redis_client, streams_settings())
    await publisher.start()
    media = MediaFormat("PCMU", STEREO)
    info = session_info(media)
    frames = audio_frames(media, 30, 160)
    stop = asyncio.Event()
    consumer = asyncio.create_task(
        run_consumer(redis_client, tmp_path, group="live", consumer="c1", keys={},
                     stop=stop, block_seconds=0.1)
    )  # fmt: skip
    session = publisher.open_session(info, lambda: None)
    session.event("opened", {})
    for n, frame in enumerate(frames):  # the consumer is reading while audio arrives
        session.audio(frame, n * 160, 160, time.monotonic())
        await asyncio.sleep(0.005)
    session.close("end", {})
    await publisher.stop(flush_timeout=10)
    await _until_file(tmp_path / f"{info.session_id}.json")  # the recording is finished
    stop.set()
    recordings = await asyncio.wait_for(consumer, timeout=10)
    assert [r.session_id for r in recordings] == [info.session_id]
    assert read_wav(tmp_path / f"{info.session_id}.wav").data == _as_pcm16(frames)


async def test_unfinished_session_is_recorded_again_after_a_consumer_restart(
    redis_client: Redis, tmp_path: Path
) -> None:
    publisher = Publisher(redis_client, streams_settings())
    await publisher.start()
    media = MediaFormat("PCMU", MONO)
    info = session_info(media)
    frames = audio_frames(media, 10, 160)
    session = publisher.open_session(info, lambda: None)
    session.event("opened", {})
    for n, frame in enumerate(frames[:5]):
        session.audio(frame, n * 160, 160, time.monotonic())
    assert await publisher.flush(10)

    stop = asyncio.Event()
    first = asyncio.create_task(
        run_consumer(redis_client, tmp_path, group="g", consumer="c1", keys={}, stop=stop,
                     block_seconds=0.1)
    )  # fmt: skip
    await _until_pending(redis_client, "g", 1)  # the consumer has read `opened`
    stop.set()  # the session is still live: its `opened` stays pending
    assert await asyncio.wait_for(first, timeout=10) == []
    assert (await redis_client.xpending(redis_keys.EVENTS_STREAM, "g"))["pending"] == 1

    for n, frame in enumerate(frames[5:], start=5):
        session.audio(frame, n * 160, 160, time.monotonic())
    session.close("end", {})
    await publisher.stop(flush_timeout=10)
    recordings = await asyncio.wait_for(
        run_consumer(redis_client, tmp_path, group="g", consumer="c1", keys={},
                     sessions_limit=1, block_seconds=0.1),
        timeout=10,
    )  # fmt: skip
    assert [r.session_id for r in recordings] == [info.session_id]
    assert read_wav(tmp_path / f"{info.session_id}.wav").data == _as_pcm16(frames)


class _AckAfterStop(Redis):
    """A real client whose XACK waits until `stop` is set, then goes to Redis: whatever
    finishes meanwhile finishes while the consumer's acknowledgement is out."""

    stop: asyncio.Event

    async def xack(self, name: Any, groupname: Any, *ids: Any) -> Any:  # type: ignore[override]
        await self.stop.wait()
        return await super().xack(name, groupname, *ids)


async def test_a_session_recorded_while_an_acknowledgement_is_out_is_returned_and_acknowledged(
    redis_client: Redis, redis_url: str, tmp_path: Path
) -> None:
    info = session_info(MediaFormat("PCMU", MONO))
    await _publish_whole_calls(redis_client, [info])

    stop = asyncio.Event()
    client = _AckAfterStop.from_url(redis_url)
    client.stop = stop
    try:
        # The first read gives `opened` and the events after it: the recording starts, and the
        # other events' acknowledgement waits for `stop`.
        consumer = asyncio.create_task(
            run_consumer(client, tmp_path, group="g", consumer="c1", keys={}, stop=stop,
                         block_seconds=0.1)
        )  # fmt: skip
        await _until_file(tmp_path / f"{info.session_id}.json")  # the recording is finished
        stop.set()
        recordings = await asyncio.wait_for(consumer, timeout=10)
    finally:
        await client.aclose()
    assert [r.session_id for r in recordings] == [info.session_id]
    assert (await redis_client.xpending(redis_keys.EVENTS_STREAM, "g"))["pending"] == 0


async def test_a_session_that_cannot_be_recorded_stays_pending_and_the_next_is_recorded(
    redis_client: Redis, tmp_path: Path
) -> None:
    media = MediaFormat("PCMU", MONO)
    broken, good = session_info(media), session_info(media)
    (tmp_path / f"{broken.session_id}.wav").mkdir()  # its WAV file cannot be opened
    await _publish_whole_calls(redis_client, [broken, good])

    recordings = await asyncio.wait_for(
        run_consumer(redis_client, tmp_path, group="g", consumer="c1", keys={},
                     sessions_limit=1, block_seconds=0.1),
        timeout=10,
    )  # fmt: skip
    assert [r.session_id for r in recordings] == [good.session_id]
    [pending] = await redis_client.xpending_range(redis_keys.EVENTS_STREAM, "g", "-", "+", 10)
    opened = await redis_client.xrange(redis_keys.EVENTS_STREAM, pending["message_id"],
                                       pending["message_id"])  # fmt: skip
    assert opened[0][1][b"session_id"] == broken.session_id.encode()


async def test_a_consumer_that_may_not_acknowledge_still_records(
    redis_client: Redis, redis_url: str, tmp_path: Path
) -> None:
    infos = [session_info(MediaFormat("PCMU", MONO)) for _ in range(2)]
    await _publish_whole_calls(redis_client, infos)

    await redis_client.execute_command(
        "ACL", "SETUSER", "no-xack", "on", "nopass", "~*", "&*", "+@all", "-xack"
    )
    client = Redis.from_url(redis_url, username="no-xack", password="")
    try:
        recordings = await asyncio.wait_for(
            run_consumer(client, tmp_path, group="g", consumer="c1", keys={},
                         sessions_limit=2, block_seconds=0.1),
            timeout=10,
        )  # fmt: skip
    finally:
        await client.aclose()
        await redis_client.execute_command("ACL", "DELUSER", "no-xack")
    assert sorted(r.session_id for r in recordings) == sorted(i.session_id for i in infos)
    # Nothing was acknowledged: a restart records both again rather than losing either.
    pending = await redis_client.xpending(redis_keys.EVENTS_STREAM, "g")
    assert pending["pending"] == len(await redis_client.xrange(redis_keys.EVENTS_STREAM))


def test_command_line_records_and_decrypts_with_a_keys_file(redis_url: str, tmp_path: Path) -> None:
    media = MediaFormat("L16", STEREO)
    info = session_info(media, encrypted=True)
    frames = audio_frames(media, 10, 160)

    async def publish() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        publisher = Publisher(client, streams_settings())
        await publisher.start()
        await _publish(publisher, info, frames, 160)
        await publisher.stop(flush_timeout=10)
        await client.aclose()

    asyncio.run(publish())
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(TEST_KEYS_JSON)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(
        ["--redis-url", redis_url, "--output-dir", str(out), "--sessions", "1",
         "--keys-file", str(keys_file), "--group", "cli"]
    )  # fmt: skip
    assert main(args) == 0
    wav = read_wav(out / f"{info.session_id}.wav")
    assert (wav.channels, wav.bits_per_sample) == (2, 16)
    assert wav.data == b"".join(frames)
