"""Issues 4 and 5: Redis goes away in the middle of a real-time call through the real gateway.

Within the backlog bound nothing is lost and order is kept. Past the bound only that session
ends (`disconnect` error), the loss is counted, the process stays alive and healthy, readiness
follows Redis, and new sessions work once Redis is back. The Redis metrics move accordingly.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.asyncio

from app.client.audio import tone_source
from app.client.session import ClientSession, SessionResult, run_session
from app.redis.embedded import EmbeddedRedis
from tests.integration.e2e.support import (
    call_config,
    http_status,
    noise_source,
    running_gateway,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import Growth, scrape, scrape_when
from tests.support.redis_servers import redis_outage
from tests.support.session_streams import closed_session_stream
from tests.support.waiting import wait_until

OUTAGE_SECONDS = 5.0
FRAMES = "audiohook_audio_frames_received_total"
PUBLISHED = "audiohook_frames_published_total"
LOST = "audiohook_frames_lost_total"
REDIS_UP = "audiohook_redis_up"
RECONNECTS = "audiohook_redis_reconnects_total"
REDIS_ERRORS = "audiohook_redis_errors_total"
BACKLOG = "audiohook_publish_backlog_frames"
FILL_RATIO = "audiohook_publish_backlog_fill_ratio"


async def _frames_sent(call: ClientSession, count: int) -> None:
    async def sent() -> bool:
        return call.result.frames_sent >= count

    await wait_until(sent, f"{count} frames sent")


async def _readiness(gateway: GatewayProcess, status: int) -> None:
    async def reached() -> bool:
        return await http_status(gateway, "/readyz") == status

    await wait_until(reached, f"/readyz {status}", timeout=15)


def _sent_between(result: SessionResult, start: float, end: float) -> int:
    return sum(1 for frame in result.frames if start <= frame.sent_at <= end)


async def test_five_second_outage_mid_call_loses_nothing_and_keeps_order(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    settings = {"PUBLISH_RETRY_MAX_SECONDS": "0.5", "PUBLISH_BACKLOG_SECONDS": "10"}
    with running_gateway(own_redis.url, tmp_path / "gateway.log", "outage", settings) as gateway:
        before = await scrape(gateway)
        call = ClientSession(
            call_config(gateway, realtime=True, source=noise_source(8.0, seed=5),
                        ping_first_delay=1.0, ping_interval=2.0)
        )  # fmt: skip
        running = asyncio.create_task(call.run())
        await _frames_sent(call, 3)
        async with redis_outage(own_redis):
            down_at = time.time()
            await _readiness(gateway, 503)
            assert await http_status(gateway, "/healthz") == 200
            during = await scrape_when(gateway, lambda s: s.value(REDIS_UP) == 0, "redis_up 0")
            # The held-back audio shows as backlog, well inside the bound.
            backlog = await scrape_when(
                gateway, lambda s: s.value(BACKLOG) >= 5, "a backlog of 5 frames", timeout=4
            )
            await asyncio.sleep(max(0.0, down_at + OUTAGE_SECONDS - time.time()))
            up_at = time.time()
            assert not running.done(), "the call must still be running when Redis returns"
        await _readiness(gateway, 200)
        result = await running
        assert result.ok, [finding.text for finding in result.findings]
        assert result.disconnect is None
        # The outage really was in the middle of the call.
        assert _sent_between(result, down_at, up_at) >= 20
        assert _sent_between(result, up_at, float("inf")) >= 1

        redis_conn = redis.asyncio.Redis.from_url(own_redis.url)
        try:
            stream = await closed_session_stream(redis_conn, result.session_id)
        finally:
            await redis_conn.aclose()
        # Every frame the client sent is in Redis, in the order sent, at its offset.
        assert stream.offsets_and_audio == [(f.offset, f.data) for f in result.frames]
        assert stream.ids == [b"%d-0" % n for n in range(1, len(stream.ids) + 1)]
        assert stream.event_types == ["opened", "closed"]
        assert stream.event_data("closed")["frames_lost"] == 0

        frames = result.frames_sent
        after = await scrape_when(
            gateway,
            lambda s: Growth(before, s)(PUBLISHED) >= frames and s.value(BACKLOG) == 0,
            "all frames published, no backlog",
        )
        assert gateway.process is not None
        assert gateway.process.poll() is None
        assert not [r for r in gateway.log_records() if "exception" in r]
    assert during.value(REDIS_UP) == 0
    assert 0 < backlog.value(FILL_RATIO) < 1
    assert after.value(REDIS_UP) == 1
    assert after.value(FILL_RATIO) == 0
    grew = Growth(before, after)
    assert grew(FRAMES) == frames
    assert grew(PUBLISHED) == frames
    assert grew(LOST) == 0
    assert grew(RECONNECTS) >= 1
    assert grew(REDIS_ERRORS, operation="publish") >= 1
    assert grew("audiohook_publish_latency_seconds_count") == frames


async def test_outage_past_the_backlog_bound_ends_that_session_and_counts_the_loss(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    settings = {"PUBLISH_RETRY_MAX_SECONDS": "0.2", "PUBLISH_BACKLOG_SECONDS": "1"}
    with running_gateway(own_redis.url, tmp_path / "gateway.log", "bound", settings) as gateway:
        before = await scrape(gateway)
        call = ClientSession(call_config(gateway, realtime=True, source=noise_source(10.0, seed=6)))
        running = asyncio.create_task(call.run())
        await _frames_sent(call, 3)
        async with redis_outage(own_redis):

            async def disconnected() -> bool:
                return call.result.disconnect is not None

            await wait_until(disconnected, "disconnect of the overflowing session", timeout=8)
            assert call.result.disconnect is not None
            assert call.result.disconnect["reason"] == "error"
            # The process is alive and says so; it is not ready while Redis is away.
            assert gateway.process is not None
            assert gateway.process.poll() is None
            assert await http_status(gateway, "/healthz") == 200
            assert await http_status(gateway, "/readyz") == 503
            during = await scrape_when(
                gateway,
                lambda s: s.value(REDIS_UP) == 0 and Growth(before, s)(LOST) >= 1,
                "redis_up 0 and frames lost",
            )
            refused = await run_session(call_config(gateway, source=tone_source(0.4)))
            assert refused.http_status == 503
        await _readiness(gateway, 200)
        result = await running
        assert result.close_reason == "disconnect"
        assert result.closed

        # A new session works once Redis is back, and loses nothing.
        fresh = await run_session(call_config(gateway, source=tone_source(1.0)))
        assert fresh.ok, [finding.text for finding in fresh.findings]
        redis_conn = redis.asyncio.Redis.from_url(own_redis.url)
        try:
            fresh_stream = await closed_session_stream(redis_conn, fresh.session_id)
            stream = await closed_session_stream(redis_conn, result.session_id)
        finally:
            await redis_conn.aclose()
        assert fresh_stream.offsets_and_audio == [(f.offset, f.data) for f in fresh.frames]

        # The ended session: what reached Redis is the start of the call, in order; the rest
        # of what the gateway accepted is counted lost, in the closed event and the metric.
        kept = len(stream.audio)
        lost = stream.event_data("closed")["frames_lost"]
        assert kept >= 1
        assert lost >= 1
        assert stream.offsets_and_audio == [(f.offset, f.data) for f in result.frames[:kept]]
        assert kept + lost <= result.frames_sent

        published = kept + fresh.frames_sent
        after = await scrape_when(
            gateway,
            lambda s: (
                Growth(before, s)(PUBLISHED) >= published
                and s.value("audiohook_sessions_active") == 0
            ),
            "all frames published",
        )
        assert gateway.process is not None
        assert gateway.process.poll() is None
        records = gateway.log_records()
    # The loss is logged with the session's ids; nothing crashed on the way.
    assert any(
        r.get("session_id") == result.session_id and int(str(r.get("frames_lost", 0))) >= 1
        for r in records
    )
    assert not [r for r in records if "exception" in r]
    assert during.value(REDIS_UP) == 0
    assert after.value(REDIS_UP) == 1
    grew = Growth(before, after)
    assert grew(LOST, integration="test") == lost
    assert grew(FRAMES) == kept + lost + fresh.frames_sent
    assert grew(PUBLISHED) == published
    assert grew(RECONNECTS) >= 1
    assert grew(REDIS_ERRORS, operation="publish") >= 1
    assert grew("audiohook_disconnects_sent_total", reason="error") == 1
    assert grew("audiohook_sessions_ended_total", outcome="disconnect") == 1
    assert grew("audiohook_sessions_ended_total", outcome="end") == 1
    assert grew("audiohook_connections_rejected_total", cause="not_ready") == 1
