"""Issue 5: /metrics of the real gateway moves by the right amounts as real sessions run.

Each scenario scrapes before and after (and during, where a gauge is the point) and checks the
differences: a probe, a normal call with pings, authentication failures and protocol errors.
The Redis outage scenario (redis_up, errors, reconnects, frames lost) is in
test_redis_outage.py, where Redis is stopped; consumer commands in test_control_replicas.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest
import redis.asyncio

from app.client.audio import tone_source
from app.client.session import ClientSession, SessionConfig, run_session
from app.redis import keys
from tests.integration.e2e.support import (
    WireCall,
    call_config,
)
from tests.support.gateway_process import (
    TEST_API_KEY,
    TEST_CLIENT_SECRET,
    TEST_ORG_ID,
    GatewayProcess,
)
from tests.support.metrics import Growth, Scrape, scrape, scrape_when
from tests.support.session_streams import closed_session_stream
from tests.support.streams import read_stream
from tests.support.waiting import wait_until

ACTIVE = "audiohook_sessions_active"
STARTED = "audiohook_sessions_started_total"
ENDED = "audiohook_sessions_ended_total"
PROBES = "audiohook_probes_total"
FRAMES = "audiohook_audio_frames_received_total"
BYTES = "audiohook_audio_received_bytes_total"
SECONDS = "audiohook_audio_received_seconds_total"
PUBLISHED = "audiohook_frames_published_total"
EVENTS = "audiohook_events_published_total"
OPEN_LATENCY = "audiohook_open_latency_seconds"
PUBLISH_LATENCY = "audiohook_publish_latency_seconds"
RTT = "audiohook_client_rtt_seconds"
REJECTED = "audiohook_connections_rejected_total"
PROTOCOL_ERRORS = "audiohook_protocol_errors_total"
DISCONNECTS = "audiohook_disconnects_sent_total"
BACKLOG = "audiohook_publish_backlog_frames"
SAMPLE_SECONDS = 1 / 8000  # the gateway keeps durations in samples


async def settled(gateway: GatewayProcess, before: Scrape, name: str, grown: float) -> Growth:
    """Scrape until no session is live, nothing waits to be published, and the sample
    `name` grew by `grown` or more."""

    def done(current: Scrape) -> bool:
        idle = current.value(ACTIVE) == 0 and current.value(BACKLOG) == 0
        return idle and Growth(before, current)(name) >= grown

    return Growth(before, await scrape_when(gateway, done, f"{name} +{grown} with no live session"))


async def test_build_info_and_histograms_are_exported(gateway: GatewayProcess) -> None:
    current = await scrape(gateway)
    assert any(name == "audiohook_build_info" for name, _, _ in current.samples)
    for histogram in (OPEN_LATENCY, PUBLISH_LATENCY, RTT):
        assert any(name == f"{histogram}_bucket" for name, _, _ in current.samples), histogram


async def test_probe_is_counted_and_publishes_nothing(
    gateway: GatewayProcess, redis_conn: redis.asyncio.Redis
) -> None:
    before = await scrape(gateway)
    probe = await run_session(
        SessionConfig.probe(gateway.ws_url, TEST_API_KEY, TEST_CLIENT_SECRET,
                            organization_id=TEST_ORG_ID, open_timeout=5, close_timeout=5,
                            ping_first_delay=None)
    )  # fmt: skip
    assert probe.ok, [finding.text for finding in probe.findings]
    delta = await settled(gateway, before, ENDED, 1)
    assert delta(PROBES, integration="test") == 1
    assert delta(STARTED, integration="test") == 1
    assert delta(ENDED, integration="test", outcome="end") == 1
    assert delta(f"{OPEN_LATENCY}_count") == 1
    assert delta(FRAMES) == probe.frames_sent  # the probe's empty frame, if any
    assert delta(BYTES) == 0

    # A call after the probe: once its audio is in Redis, anything the probe had queued
    # would be too. The probe has no stream and put nothing on the events stream.
    call = await run_session(call_config(gateway, source=tone_source(0.4)))
    assert call.ok
    await closed_session_stream(redis_conn, call.session_id)

    def counted(current: Scrape) -> bool:
        # Redis has answered: the gateway counts the event next, and the published frames
        # within a second (batched with the publisher's gauges).
        growth = Growth(before, current)
        return growth(EVENTS, type="closed") >= 1 and growth(PUBLISHED) >= call.frames_sent

    after = Growth(before, await scrape_when(gateway, counted, "the call's `closed` counted"))
    assert await redis_conn.exists(keys.audio_stream(probe.session_id)) == 0
    events = await read_stream(redis_conn, keys.EVENTS_STREAM)
    assert not [f for _, f in events if f[b"session_id"] == probe.session_id.encode()]
    assert after(PUBLISHED) == call.frames_sent
    assert after(EVENTS, type="opened") == 1
    assert after(EVENTS, type="closed") == 1
    assert after(PROBES) == 1


def _rtts_sent(sent_texts: list[str]) -> list[Decimal]:
    """The `rtt` values the client reported in its pings, in seconds."""
    rtts = []
    for text in sent_texts:
        message = json.loads(text)
        rtt = message["parameters"].get("rtt")
        if message["type"] == "ping" and rtt is not None:
            rtts.append(Decimal(rtt.removeprefix("PT").removesuffix("S")))
    return rtts


async def test_a_normal_call_moves_every_session_audio_and_publish_metric(
    gateway: GatewayProcess, redis_conn: redis.asyncio.Redis
) -> None:
    before = await scrape(gateway)
    call = ClientSession(
        call_config(gateway, realtime=True, source=tone_source(1.4),
                    ping_first_delay=0.1, ping_interval=0.25)
    )  # fmt: skip
    running = asyncio.create_task(call.run())

    async def streaming() -> bool:
        return call.result.frames_sent >= 2

    await wait_until(streaming, "audio flowing")
    during = await scrape(gateway)
    result = await running
    assert result.ok, [finding.text for finding in result.findings]
    frames = result.frames_sent
    await closed_session_stream(redis_conn, result.session_id)
    delta = await settled(gateway, before, PUBLISHED, frames)

    assert during.value(ACTIVE, integration="test") - before.value(ACTIVE, integration="test") == 1
    assert delta.after.value(ACTIVE, integration="test") == 0
    assert delta(STARTED, integration="test") == 1
    assert delta(ENDED, integration="test", outcome="end") == 1
    assert delta(ENDED) == 1
    assert delta(FRAMES, integration="test") == frames == 7
    assert delta(BYTES, integration="test") == result.bytes_sent
    assert delta(SECONDS, integration="test") == pytest.approx(result.samples_sent / 8000)
    assert delta(PUBLISHED) == frames
    assert delta(f"{PUBLISH_LATENCY}_count") == frames
    assert delta(f"{PUBLISH_LATENCY}_sum") > 0
    assert delta(EVENTS, type="opened") == 1
    assert delta(EVENTS, type="closed") == 1
    assert delta(EVENTS) == 2
    assert delta(f"{OPEN_LATENCY}_count") == 1
    assert delta(DISCONNECTS) == 0
    assert delta(PROTOCOL_ERRORS) == 0

    rtts = _rtts_sent([message.text for message in result.sent])
    assert len(rtts) >= 1  # every ping after the first carries the last round trip
    assert delta(f"{RTT}_count") == len(rtts)
    assert delta(f"{RTT}_sum") == pytest.approx(float(sum(rtts)), abs=SAMPLE_SECONDS * len(rtts))


async def test_a_live_calls_audio_reaches_the_metrics_before_it_ends(
    gateway: GatewayProcess, redis_conn: redis.asyncio.Redis
) -> None:
    """Frames are tallied per integration and added to the counters every second while calls
    are live, not only when they end."""
    before = await scrape(gateway)
    call = ClientSession(call_config(gateway, realtime=True, source=tone_source(4.0)))
    running = asyncio.create_task(call.run())

    def counted_while_live(current: Scrape) -> bool:
        return Growth(before, current)(FRAMES, integration="test") >= 3

    during = await scrape_when(gateway, counted_while_live, "a live call's frames", timeout=5.0)
    assert not running.done()
    assert during.value(ACTIVE, integration="test") - before.value(ACTIVE, integration="test") == 1
    result = await running
    assert result.ok, [finding.text for finding in result.findings]
    await closed_session_stream(redis_conn, result.session_id)
    after = await settled(gateway, before, PUBLISHED, result.frames_sent)
    assert after(FRAMES, integration="test") == result.frames_sent
    assert after(BYTES, integration="test") == result.bytes_sent
    # The counts seen mid-call were whole frames, each with its bytes and samples.
    live = Growth(before, during)
    frames = live(FRAMES, integration="test")
    assert live(BYTES, integration="test") == frames * result.bytes_sent / result.frames_sent
    assert live(SECONDS, integration="test") == pytest.approx(
        frames * result.samples_sent / result.frames_sent / 8000
    )


@pytest.mark.parametrize(
    ("credentials", "cause"),
    [
        ({"client_secret": "V3JvbmdTZWNyZXRXcm9uZ1NlY3JldFdyb25nU2VjcmU="}, "auth_failed"),
        ({"api_key": "no-such-api-key"}, "auth_failed"),
        ({"created": -60}, "auth_expired"),
    ],
    ids=["wrong-secret", "unknown-key", "expired-signature"],
)
async def test_an_authentication_failure_is_counted_by_cause(
    gateway: GatewayProcess, credentials: dict[str, object], cause: str
) -> None:
    before = await scrape(gateway)
    options: dict[str, object] = dict(credentials)
    if "created" in options:
        options["created"] = int(time.time()) + int(str(options["created"]))
    call = await WireCall.connect(gateway.ws_url, **options)  # type: ignore[arg-type]
    await call.send_open()  # never answered with opened
    disconnect = await call.expect("disconnect")
    assert disconnect["reason"] == "unauthorized"
    await call.close("disconnect")
    delta = await settled(gateway, before, REJECTED, 1)
    assert delta(REJECTED, cause=cause) == 1
    assert delta(REJECTED) == 1
    assert delta(DISCONNECTS, reason="unauthorized") == 1
    # The socket was accepted (to answer `disconnect`), so it counts as a session of no
    # integration: started, then ended, and never opened.
    assert delta(STARTED) == 1
    assert delta(STARTED, integration="unknown") == 1
    assert delta(f"{OPEN_LATENCY}_count") == 0


async def _bad_json(call: WireCall) -> None:
    await call.ws.send("{this is not json")


async def _bad_seq(call: WireCall) -> None:
    call.counters.seq += 5  # skips four: a client that lost count carries on from its own count
    await call.send("ping", {}, seq=call.counters.seq)


async def _unknown_type(call: WireCall) -> None:
    await call.send("shout", {})


async def _bad_frame_size(call: WireCall) -> None:
    await call.ws.send(b"\xff" * 1601)  # stereo PCMU frames are whole sample pairs


@pytest.mark.parametrize(
    ("misbehave", "kind"),
    [
        (_bad_json, "invalid_json"),
        (_bad_seq, "bad_seq"),
        (_unknown_type, "unknown_type"),
        (_bad_frame_size, "bad_frame_size"),
    ],
)
async def test_a_protocol_error_is_counted_by_kind_with_its_error_disconnect(
    gateway: GatewayProcess, misbehave: Callable[[WireCall], Awaitable[None]], kind: str
) -> None:
    before = await scrape(gateway)
    call = await WireCall.connect(gateway.ws_url)
    await call.open()
    await call.audio(b"\xff" * 3200, 1600)
    await misbehave(call)
    disconnect = await call.expect("disconnect")
    assert disconnect["reason"] == "error"
    await call.close("disconnect")
    delta = await settled(gateway, before, PROTOCOL_ERRORS, 1)
    assert delta(PROTOCOL_ERRORS, kind=kind) == 1
    assert delta(PROTOCOL_ERRORS) == 1
    assert delta(DISCONNECTS, integration="test", reason="error") == 1
    assert delta(ENDED, integration="test", outcome="disconnect") == 1
    assert delta(STARTED, integration="test") == 1
    assert delta(FRAMES, integration="test") == 1
