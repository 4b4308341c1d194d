"""Clients that keep sending when they should stop, or send faster than any call can: they
cost the gateway counting, a few log lines and nothing of a good call running beside them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import redis.asyncio

from app.protocol.session import MAX_MESSAGES_AFTER_END
from app.redis.embedded import EmbeddedRedis
from tests.integration.gateway.helpers import alongside_good_call, running_gateway
from tests.integration.resilience.wire import WireClient
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import PROTOCOL_ERRORS, MetricDelta
from tests.support.session_streams import closed_session_stream

AFTER_END = "audiohook_messages_after_end_total"
FLOOD_MESSAGES = 3000
FRAME = bytes(range(256)) * 12 + bytes(128)  # 3,200 bytes: 200 ms of stereo PCMU


async def flood(client: WireClient, message: str, count: int) -> None:
    """Send `count` copies of `message`, 100 per write, until the server hangs up."""
    with contextlib.suppress(ConnectionError):
        for _ in range(count // 100):
            await client.send_in_one_write([message] * 100)


def log_size(gateway: GatewayProcess) -> int:
    return gateway.log_path.stat().st_size


async def test_an_unauthenticated_flood_is_only_counted_and_then_dropped(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    counted = MetricDelta(gateway, AFTER_END, integration="unknown")
    violations = MetricDelta(gateway, PROTOCOL_ERRORS)
    long_correlation_id = "c" * 4000
    async with alongside_good_call(gateway.ws_url, gateway_redis):
        log_before = log_size(gateway)
        client = await WireClient.connect(
            gateway.ws_url, api_key="not-a-known-key", correlation_id=long_correlation_id
        )
        try:
            await flood(client, "x", FLOOD_MESSAGES)
            # Dropped without a close handshake it could prolong by sending on.
            assert await client.wait_closed() is None
        finally:
            await client.aclose()
    assert counted.delta() == MAX_MESSAGES_AFTER_END + 1
    assert violations.delta() == 0  # nothing it sent was even parsed
    log_text = gateway.log_path.read_bytes()[log_before:].decode()
    # A handful of lines (its own and the good call's), none carrying the header in full.
    assert len(log_text) < 16_384, log_text[-2000:]
    assert long_correlation_id not in log_text
    assert "c" * 256 in log_text  # clipped, not dropped


async def test_a_flood_after_disconnect_is_not_parsed_logged_or_answered(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    counted = MetricDelta(gateway, AFTER_END, integration="test")
    violations = MetricDelta(gateway, PROTOCOL_ERRORS)
    async with alongside_good_call(gateway.ws_url, gateway_redis):
        client = await WireClient.connect(gateway.ws_url)
        try:
            await client.open()
            await client.send_text("{")  # a violation: disconnect error
            disconnect = await client.expect("disconnect")
            assert disconnect["parameters"]["reason"] == "error"
            log_before = log_size(gateway)
            await flood(client, '{"version":"2","type":"ping"}', FLOOD_MESSAGES)
            assert await client.wait_closed() is None
            assert [m["type"] for m in client.messages] == ["opened", "disconnect"]
        finally:
            await client.aclose()
    assert violations.delta() == 1  # the first one only
    assert counted.delta() == MAX_MESSAGES_AFTER_END + 1
    assert log_size(gateway) - log_before < 8192


async def test_frames_read_together_with_an_oversized_frame_are_all_published(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    """The good frames that share a TCP read with a frame over the WebSocket limit reach
    Redis before the socket is closed with 1009."""
    oversized = MetricDelta(gateway, PROTOCOL_ERRORS, kind="message_too_large")
    client = await WireClient.connect(gateway.ws_url)
    try:
        await client.open()
        good_frames = [FRAME[index:] + FRAME[:index] for index in range(6)]
        await client.send_in_one_write([*good_frames, bytes(400_000)])
        assert await client.wait_closed() == 1009
    finally:
        await client.aclose()
    stream = await closed_session_stream(gateway_redis, client.session_id)
    assert stream.frames == good_frames
    assert oversized.delta() == 1


async def test_a_failed_login_announcing_an_oversized_message_is_counted_not_logged(
    gateway: GatewayProcess,
) -> None:
    """A failed login's session writes no lines, its 1009 included: any client can open
    such connections by the hundred."""
    oversized = MetricDelta(gateway, PROTOCOL_ERRORS, kind="message_too_large")
    log_before = log_size(gateway)
    for _ in range(3):
        client = await WireClient.connect(gateway.ws_url, api_key="not-a-known-key")
        try:  # a binary frame head announcing 1 TiB, with its masking key
            client.writer.write(b"\x82\xff" + (1 << 40).to_bytes(8) + b"\0\0\0\0")
            assert await client.wait_closed() == 1009
        finally:
            await client.aclose()
    assert oversized.delta() == 3
    assert "WebSocket size limit" not in gateway.log_path.read_bytes()[log_before:].decode()


async def test_audio_far_faster_than_real_time_ends_the_session(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    settings = {"MAX_AUDIO_SPEED": "2", "AUDIO_BURST_SECONDS": "1"}
    with running_gateway(redis_server, tmp_path, settings) as gateway:
        rate_exceeded = MetricDelta(gateway, PROTOCOL_ERRORS, kind="rate_exceeded")
        dropped = MetricDelta(gateway, "audiohook_audio_frames_dropped_total")
        client = await WireClient.connect(gateway.ws_url)
        sent = [FRAME[index:] + FRAME[:index] for index in range(50)]  # 10 s of audio at once
        try:
            await client.open()
            with contextlib.suppress(ConnectionError):
                await client.send_in_one_write(list(sent))
            disconnect = await client.expect("disconnect")
            assert disconnect["parameters"] == {
                "reason": "error",
                "info": "Client Error: Audio sent faster than real time",
            }
            await client.close("disconnect")
        finally:
            await client.aclose()
        async with redis.asyncio.Redis.from_url(redis_server.url) as redis_client:
            stream = await closed_session_stream(redis_client, client.session_id)
        # What was accepted is the start of what was sent; the rest is counted, not lost.
        accepted = len(stream.frames)
        assert 5 <= accepted < 50
        assert stream.frames == sent[:accepted]
        assert rate_exceeded.delta() == 1
        assert dropped.delta() == 50 - accepted
        assert stream.event_data("closed")["reason"] == "disconnect"


async def test_a_client_flooding_after_the_close_frame_is_dropped(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """After the server's close frame a client owes only its close reply; whatever it sends
    instead is parsed by nobody and, past a small allowance, ends the TCP connection."""
    settings = {"OPEN_TIMEOUT_SECONDS": "0.3", "CLOSE_TIMEOUT_SECONDS": "0.3"}
    with running_gateway(redis_server, tmp_path, settings) as gateway:
        client = await WireClient.connect(gateway.ws_url)
        try:
            # Never opens: `disconnect` (open timeout), then the close frame 0.3 s later.
            assert (await client.expect("disconnect"))["parameters"]["reason"] == "error"
            await asyncio.sleep(1.0)  # the close frame is sent; this client does not answer it
            accepted = 0
            with contextlib.suppress(ConnectionError):
                for _ in range(400):  # up to 40 MB, 100 KB per write
                    await client.send_in_one_write([bytes(1000)] * 100)
                    accepted += 100_000
            assert accepted < 20_000_000  # dropped long before, not read to the end
        finally:
            await client.aclose()


async def test_a_burst_of_failed_logins_is_counted_in_full_and_logged_in_part(
    gateway: GatewayProcess,
) -> None:
    attempts = 150
    refused = MetricDelta(gateway, "audiohook_connections_rejected_total")
    suppressed = MetricDelta(gateway, "audiohook_log_lines_suppressed_total")
    log_before = log_size(gateway)

    async def failed_login() -> None:
        client = await WireClient.connect(gateway.ws_url, api_key="not-a-known-key")
        await client.aclose()

    started = time.monotonic()
    for _ in range(3):  # three waves over more than a second
        await asyncio.gather(*(failed_login() for _ in range(attempts // 3)))
        await asyncio.sleep(0.6)
    seconds = time.monotonic() - started
    assert refused.delta() == attempts
    records = [
        json.loads(line)
        for line in gateway.log_path.read_bytes()[log_before:].decode().splitlines()
    ]
    failures = [r for r in records if r["message"] == "authentication failed"]
    # A burst of 20 per cause (less if the suite's earlier failures drew on it), then one a
    # second.
    assert 1 <= len(failures) <= 20 + seconds + 1
    assert suppressed.delta() >= attempts - len(failures)
    # No per-connection lines from the server library either.
    assert not [r for r in records if r["logger"] == "uvicorn.error"]


def masked_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One client frame (FIN set, masked with a zero key), as raw bytes."""
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


async def test_a_flood_of_tiny_control_frames_is_cut_off_by_the_frame_budget(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    """Empty pings never reach the session's message bound, and cost far more per byte than
    audio: the connection's frame budget drops such a client, unauthenticated or not."""
    async with alongside_good_call(gateway.ws_url, gateway_redis):
        client = await WireClient.connect(gateway.ws_url, api_key="not-a-known-key")
        try:
            ping = masked_frame(0x9)
            with contextlib.suppress(ConnectionError):
                for _ in range(100):  # up to 100,000 empty pings, 1,000 per write
                    client.writer.write(ping * 1000)
                    await client.writer.drain()
            await client.wait_closed()
            assert client.close_code in (1008, None)  # failed with 1008, or already dropped
        finally:
            await client.aclose()


async def test_a_client_that_pings_but_never_reads_is_dropped_in_bounded_time(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Its pongs are not queued without bound, and once its session is over the TCP
    connection goes, though no close handshake can complete on a full buffer."""
    settings = {"OPEN_TIMEOUT_SECONDS": "0.5", "CLOSE_TIMEOUT_SECONDS": "0.5"}
    with running_gateway(redis_server, tmp_path, settings) as gateway:
        client = await WireClient.connect(
            gateway.ws_url, api_key="not-a-known-key", receive_buffer=4096
        )
        ping = masked_frame(0x9, b"p" * 125)
        dropped = False
        try:
            for _ in range(300):  # 150 pings a second for up to 20 s, never reading
                client.writer.write(ping * 15)
                await client.writer.drain()
                await asyncio.sleep(0.1)
        except ConnectionError:
            dropped = True
        finally:
            client.abort()
        assert dropped
