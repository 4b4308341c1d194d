"""The Genesys connection probe against the real gateway: one by hand, exactly as Genesys
sends it, and 20 at once; probes are counted but leave no audio stream in Redis."""

from __future__ import annotations

import asyncio

import redis.asyncio

from app.client.audio import tone_source
from app.client.session import SessionConfig, run_session
from app.protocol.messages import NULL_UUID
from app.redis import keys
from tests.integration.gateway.helpers import events_of
from tests.support.gateway_process import TEST_API_KEY, TEST_CLIENT_SECRET, GatewayProcess
from tests.support.metrics import MetricDelta
from tests.support.raw_client import PROBE_PARTICIPANT, RawClient, genesys_offers
from tests.support.session_streams import closed_session_stream

PROBES = "audiohook_probes_total"


async def _no_trace_of(
    gateway: GatewayProcess, client: redis.asyncio.Redis, session_ids: list[str]
) -> None:
    """No audio stream and no lifecycle event for these (finished) sessions.

    Barrier first: a real call made afterwards, until its `closed` entry is in Redis. The
    publisher drains its queues in order, so whatever the probes had left to write would be
    in Redis by then."""
    barrier = SessionConfig(
        uri=gateway.ws_url,
        api_key=TEST_API_KEY,
        client_secret=TEST_CLIENT_SECRET,
        source=tone_source(0.2),
        realtime=False,
    )
    result = await run_session(barrier)
    assert result.ok, [finding.text for finding in result.findings]
    await closed_session_stream(client, barrier.session_id)
    assert await client.exists(*(keys.audio_stream(sid) for sid in session_ids)) == 0
    for session_id in session_ids:
        assert await events_of(client, session_id) == []


async def test_a_genesys_probe_is_opened_and_closed(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    probes = MetricDelta(gateway, PROBES, integration="test")
    async with await RawClient.connect(gateway.ws_url) as client:
        offers = genesys_offers()
        opened = await client.open(
            offers,
            conversationId=NULL_UUID,
            participant=dict(PROBE_PARTICIPANT),
            language=None,  # JSON null, as Genesys sends it
            customConfig={},
        )
        assert (opened.seq, opened.clientseq) == (1, 1)
        media = opened.parameters["media"]
        assert media == [] or (len(media) == 1 and media[0] in offers)
        if media:
            await client.send_audio(b"")  # the probe's one zero-length frame
        closed = await client.close("end")
        assert (closed.seq, closed.clientseq) == (2, 2)
        await client.expect_silence(0.2)
        client.assert_conformant()
    assert probes.delta() == 1
    await _no_trace_of(gateway, gateway_redis, [client.session_id])


async def test_twenty_concurrent_probes_all_succeed(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    probes = MetricDelta(gateway, PROBES, integration="test")
    configs = [
        SessionConfig.probe(gateway.ws_url, TEST_API_KEY, TEST_CLIENT_SECRET) for _ in range(20)
    ]
    results = await asyncio.gather(*(run_session(config) for config in configs))
    for result in results:
        assert result.ok, [finding.text for finding in result.findings]
        assert result.opened
        assert result.closed
        assert result.close_reason == "end"
    assert len({result.session_id for result in results}) == 20
    assert probes.delta() == 20
    await _no_trace_of(gateway, gateway_redis, [result.session_id for result in results])


async def test_probes_alongside_a_real_call_keep_sessions_apart(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    """Probes share the null conversation id; the real call's audio is unaffected."""
    call = SessionConfig(
        uri=gateway.ws_url,
        api_key=TEST_API_KEY,
        client_secret=TEST_CLIENT_SECRET,
        source=tone_source(1.0),
        realtime=False,
    )
    probes = [
        SessionConfig.probe(gateway.ws_url, TEST_API_KEY, TEST_CLIENT_SECRET) for _ in range(5)
    ]
    results = await asyncio.gather(run_session(call), *(run_session(p) for p in probes))
    assert all(result.ok for result in results), [r.findings for r in results if not r.ok]
    stream = await closed_session_stream(gateway_redis, call.session_id)
    assert stream.frames == [frame.data for frame in results[0].frames]
    await _no_trace_of(gateway, gateway_redis, [result.session_id for result in results[1:]])
