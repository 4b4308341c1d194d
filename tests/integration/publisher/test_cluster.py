"""The streams layer on a 3-master Redis Cluster on loopback ports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient

from app.control.plane import APPLIED, UNKNOWN_SESSION, ControlClient, ControlPlane
from app.protocol.media import MediaFormat
from app.publisher.publisher import Publisher
from app.redis import keys
from app.redis.client import create_redis
from app.tools.consume import reassemble, run_consumer
from app.tools.wav import read_wav
from tests.support.redis_servers import RedisCluster
from tests.support.registry import wait_registered
from tests.support.streams import (
    MONO,
    STEREO,
    TEST_KEYS,
    RecordingTarget,
    audio_frames,
    read_stream,
    session_info,
    streams_settings,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture
async def cluster_client(cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    client = create_redis(streams_settings(redis_cluster=True), cluster.url)
    assert isinstance(client, ClusterClient)
    await client.flushall()  # routed to every primary
    yield client
    await client.aclose()


async def test_sessions_spread_over_the_masters_and_round_trip(
    cluster_client: ClusterClient, tmp_path: Path
) -> None:
    publisher = Publisher(cluster_client, streams_settings())
    await publisher.start()
    cases = []
    for n, (fmt, channels, encrypted) in enumerate(
        [("PCMU", STEREO, False), ("L16", MONO, True), ("PCMU", MONO, True), ("L16", STEREO, False),
         ("PCMU", STEREO, True), ("L16", MONO, False)]
    ):  # fmt: skip
        media = MediaFormat(fmt, channels)  # type: ignore[arg-type]
        info = session_info(media, encrypted=encrypted)
        frames = audio_frames(media, 20, 160, seed=n)
        session = publisher.open_session(info, lambda: pytest.fail("overflow"))
        session.event("opened", {})
        for i, frame in enumerate(frames):
            assert session.audio(frame, i * 160, 160, time.monotonic())
        session.close("end", {})
        cases.append((info, media, frames))
    await publisher.stop(flush_timeout=10)

    nodes = {
        str(cluster_client.get_node_from_key(keys.audio_stream(info.session_id)))
        for info, _, _ in cases
    }
    assert len(nodes) >= 2  # the sessions really live on different masters
    for info, media, frames in cases:
        entries = await read_stream(cluster_client, keys.audio_stream(info.session_id))
        assert reassemble(entries, media, session_id=info.session_id, keys=TEST_KEYS) == b"".join(
            frames
        )
        assert await cluster_client.ttl(keys.audio_stream(info.session_id)) > 0

    recordings = await asyncio.wait_for(
        run_consumer(cluster_client, tmp_path, group="g", consumer="c", keys=TEST_KEYS,
                     sessions_limit=len(cases), block_seconds=0.1, wav_encoding="mulaw"),
        timeout=20,
    )  # fmt: skip
    assert len(recordings) == len(cases)
    for info, _, frames in cases:
        assert read_wav(tmp_path / f"{info.session_id}.wav").data == b"".join(frames)


async def test_control_commands_on_the_cluster(cluster: RedisCluster) -> None:
    settings = streams_settings(redis_cluster=True)
    clients = [create_redis(settings, cluster.url) for _ in range(3)]
    planes = [
        ControlPlane(clients[0], "replica-a", block_seconds=0.2),
        ControlPlane(clients[1], "replica-b", block_seconds=0.2),
    ]
    for plane in planes:
        await plane.start()
    targets = {f"s{n}": RecordingTarget() for n in range(6)}
    for n, (session_id, target) in enumerate(targets.items()):
        planes[n % 2].register(session_id, target)
    control = ControlClient(clients[2])
    for session_id in targets:
        await wait_registered(clients[2], session_id)
    for n, session_id in enumerate(targets):
        reply = await control.request(session_id, "pause")
        assert (reply.result, reply.replica) == (APPLIED, f"replica-{'ab'[n % 2]}")
    assert (await control.request("missing", "pause")).result == UNKNOWN_SESSION
    assert all(len(t.applied) == 1 for t in targets.values())
    # A session registered on both replicas: the one letting go leaves the other's entry.
    planes[1].register("s0", RecordingTarget())
    await wait_registered(clients[2], "s0", "replica-b")
    await planes[0].stop()  # compare-and-delete of its entries, spread over the masters
    assert await clients[2].get(keys.session_owner("s0")) == b"replica-b"
    assert [await clients[2].exists(keys.session_owner(s)) for s in ("s2", "s4")] == [0, 0]
    for plane in planes:
        await plane.stop()
    for client in clients:
        await client.aclose()
