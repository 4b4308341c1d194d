"""Issue 4: the round trip through the real gateway on a 3-master Redis Cluster (loopback).

The gateway runs with AUDIOHOOK_REDIS_CLUSTER=true against one node's URL; the calls' session
ids are chosen so that their streams live on all three masters; `consume --cluster` records
them, encrypted or not, identical to what was streamed. A consumer command crosses the
cluster too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient

from app.client.audio import wav_source
from app.client.session import ClientSession, run_session
from app.control.plane import APPLIED, ControlClient
from app.protocol.media import AudioFormat
from app.redis import keys
from app.redis.client import create_redis
from tests.integration.e2e.support import (
    assert_same_audio,
    call_config,
    cli_env,
    json_lines,
    make_wav,
    new_consumer_group,
    noise_source,
    run_cli,
    running_gateway,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.redis_servers import RedisCluster
from tests.support.registry import wait_registered
from tests.support.session_streams import closed_session_stream
from tests.support.streams import TEST_KEYS_JSON, streams_settings

SAMPLES = 6_500
# (format, channels, integration): a mix of layouts, plain and encrypted.
CASES: list[tuple[AudioFormat, int, str]] = [
    ("PCMU", 2, "test"),
    ("L16", 1, "secure"),
    ("PCMU", 1, "secure"),
    ("L16", 2, "test"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def cluster_gateway(
    cluster: RedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    log_path = tmp_path_factory.mktemp("cluster-gateway") / "gateway.log"
    settings = {"REDIS_CLUSTER": "true"}
    with running_gateway(cluster.url, log_path, "replica-cluster", settings) as process:
        yield process


@pytest.fixture
async def cluster_conn(cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    client = create_redis(streams_settings(redis_cluster=True), cluster.url)
    assert isinstance(client, ClusterClient)
    await client.initialize()  # learn the slot map now: the test picks ids per master
    try:
        yield client
    finally:
        await client.aclose()


def _session_ids_on_every_master(client: ClusterClient, count: int) -> list[str]:
    """`count` fresh session ids whose streams land on all masters (round robin)."""
    masters = sorted({node.name for node in client.get_primaries()})
    wanted = [masters[n % len(masters)] for n in range(count)]
    chosen: list[str] = []
    while len(chosen) < count:
        candidate = str(uuid.uuid4())
        node = client.get_node_from_key(keys.audio_stream(candidate))
        if node is not None and node.name == wanted[len(chosen)]:
            chosen.append(candidate)
    return chosen


async def test_round_trip_through_the_gateway_on_a_redis_cluster(
    cluster_gateway: GatewayProcess, cluster_conn: ClusterClient, tmp_path: Path
) -> None:
    assert len(cluster_conn.get_primaries()) == 3
    group = await new_consumer_group(cluster_conn)
    session_ids = _session_ids_on_every_master(cluster_conn, len(CASES))
    inputs = []
    for seed, (fmt, channels, integration) in enumerate(CASES, start=20):
        path = tmp_path / f"in-{seed}.wav"
        inputs.append((fmt, channels, integration, path, make_wav(path, fmt, channels,
                                                                   SAMPLES, seed)))  # fmt: skip
    results = await asyncio.gather(
        *(
            run_session(
                call_config(
                    cluster_gateway,
                    integration=integration,
                    fmt=fmt,
                    layout="stereo" if channels == 2 else "external",
                    source=wav_source(path),
                    session_id=session_id,
                )
            )
            for (fmt, channels, integration, path, _), session_id in zip(
                inputs, session_ids, strict=True
            )
        )
    )
    for result in results:
        assert result.ok, [finding.text for finding in result.findings]
        stream = await closed_session_stream(cluster_conn, result.session_id)
        assert [offset for offset, _ in stream.offsets_and_audio] == [
            frame.offset for frame in result.frames
        ]

    out_dir = tmp_path / "out"
    code, out, err = await run_cli(
        ["consume", "--cluster", "--redis-url", cluster_gateway.env["AUDIOHOOK_REDIS_URL"],
         "--output-dir", str(out_dir), "--group", group, "--sessions", str(len(CASES))],
        env=cli_env(PAYLOAD_ENCRYPTION_KEYS=TEST_KEYS_JSON),
    )  # fmt: skip
    assert code == 0, err
    printed = {line["session_id"]: line for line in json_lines(out)}
    assert sorted(printed) == sorted(session_ids)
    for (fmt, channels, _, _, data), session_id in zip(inputs, session_ids, strict=True):
        assert printed[session_id]["complete"] is True
        assert_same_audio(out_dir / f"{session_id}.wav", fmt, channels, data)


async def test_a_consumer_command_reaches_a_call_through_the_cluster(
    cluster_gateway: GatewayProcess, cluster_conn: ClusterClient
) -> None:
    call = ClientSession(
        call_config(cluster_gateway, realtime=True, source=noise_source(10.0, seed=3))
    )
    running = asyncio.create_task(call.run())
    await wait_registered(cluster_conn, call.config.session_id, "replica-cluster")
    reply = await ControlClient(cluster_conn).request(
        call.config.session_id, "disconnect", reason="completed"
    )
    assert reply.result == APPLIED
    result = await asyncio.wait_for(running, timeout=10)
    assert result.disconnect == {"reason": "completed"}
    assert result.closed
