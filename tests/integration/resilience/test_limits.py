"""Every limit of issue 8 against the real gateway process: a clear answer, a metric, and a
gateway that still serves a normal session afterwards.

Connections come from chosen loopback source addresses (127.0.0.0/8), so per-source limits
can be exercised from one machine without touching the sessions of other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis.asyncio

from app.control.plane import APPLIED, ControlClient
from app.redis.embedded import EmbeddedRedis
from tests.integration.resilience.helpers import (
    LIMITED_KEY,
    LIMITED_SECRET,
    gateway_process,
    readyz,
    refused,
)
from tests.integration.resilience.wire import Refused, WireClient
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import (
    DISCONNECTS,
    PROTOCOL_ERRORS,
    REJECTED,
    SESSIONS_ACTIVE,
    metric_value,
    wait_for_metric,
)
from tests.support.registry import wait_unregistered
from tests.support.session_streams import closed_session_stream

FRAME_BYTES = 3200  # 200 ms of stereo PCMU
HANG_GUARD = 10.0


async def assert_healthy(
    gateway: GatewayProcess, redis_client: redis.asyncio.Redis, source: str = "127.0.0.1"
) -> None:
    """Alive, ready, and a new well-behaved session streams, closes and is stored whole."""
    assert httpx.get(f"{gateway.metrics_url}/healthz", timeout=2).status_code == 200
    assert readyz(gateway) == 200
    client = await WireClient.connect(gateway.ws_url, source=source)
    try:
        await client.open()
        rng = random.Random(1)
        sent = []
        for _ in range(5):
            frame = rng.randbytes(FRAME_BYTES)
            sent.append((client.counters.position, frame))
            await client.send_audio(frame)
        await client.close()
    finally:
        await client.aclose()
    stored = await closed_session_stream(redis_client, client.session_id)
    assert stored.offsets_and_audio == sent
    assert gateway.process is not None
    assert gateway.process.poll() is None


async def open_sessions(uri: str, count: int, **kwargs: object) -> list[WireClient]:
    clients = []
    for _ in range(count):
        client = await WireClient.connect(uri, **kwargs)  # type: ignore[arg-type]
        await client.open()
        clients.append(client)
    return clients


async def close_all(clients: list[WireClient]) -> None:
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()
        await client.aclose()


async def concurrent_upgrades(uri: str, count: int, **kwargs: object) -> list[WireClient | int]:
    """`count` upgrades at once: the connected clients, or the HTTP status of each refusal."""

    async def one() -> WireClient | int:
        try:
            return await WireClient.connect(uri, **kwargs)  # type: ignore[arg-type]
        except Refused as answer:
            return answer.status

    return list(await asyncio.gather(*(one() for _ in range(count))))


# --- sessions per replica and per integration -------------------------------------------------


async def test_max_sessions_per_replica(
    redis_server: EmbeddedRedis, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    with gateway_process(redis_server, tmp_path, {"MAX_SESSIONS": "3"}) as gateway:
        clients = await open_sessions(gateway.ws_url, 3)
        try:
            before = metric_value(gateway, REJECTED, cause="session_limit")
            answer = await refused(gateway.ws_url)
            assert answer.status == 503
            assert metric_value(gateway, REJECTED, cause="session_limit") == before + 1
            await close_all(clients[:1])
            await wait_for_metric(gateway, SESSIONS_ACTIVE, 2)
            await assert_healthy(gateway, redis_client)  # a freed slot is usable again
        finally:
            await close_all(clients)


async def test_max_sessions_holds_for_simultaneous_upgrades(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Upgrades racing each other must not all pass the check before any of them counts."""
    with gateway_process(redis_server, tmp_path, {"MAX_SESSIONS": "3"}) as gateway:
        outcomes = await concurrent_upgrades(gateway.ws_url, 12)
        accepted = [o for o in outcomes if isinstance(o, WireClient)]
        try:
            statuses = sorted(o for o in outcomes if isinstance(o, int))
            assert len(accepted) == 3, f"{len(accepted)} of 12 admitted with max_sessions 3"
            assert statuses == [503] * 9
        finally:
            for client in accepted:
                await client.aclose()


async def test_max_sessions_per_integration(
    redis_server: EmbeddedRedis, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    limited = {"api_key": LIMITED_KEY, "client_secret": LIMITED_SECRET}
    with gateway_process(redis_server, tmp_path) as gateway:
        clients = await open_sessions(gateway.ws_url, 2, **limited)
        try:
            before = metric_value(gateway, REJECTED, cause="integration_limit")
            session_id = str(uuid.uuid4())
            answer = await refused(gateway.ws_url, session_id=session_id, **limited)
            assert answer.status == 429
            assert metric_value(gateway, REJECTED, cause="integration_limit") == before + 1
            # Refused after its claim wrote the session's control registry entry: deleted.
            await wait_unregistered(redis_client, session_id)
            await assert_healthy(gateway, redis_client)  # other integrations are not affected
            await close_all(clients[:1])
            await wait_for_metric(gateway, SESSIONS_ACTIVE, 1, integration="limited")
            clients += await open_sessions(gateway.ws_url, 1, **limited)
        finally:
            await close_all(clients)


async def test_max_sessions_per_integration_holds_for_simultaneous_upgrades(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    limited = {"api_key": LIMITED_KEY, "client_secret": LIMITED_SECRET}
    with gateway_process(redis_server, tmp_path) as gateway:
        outcomes = await concurrent_upgrades(gateway.ws_url, 8, **limited)
        accepted = [o for o in outcomes if isinstance(o, WireClient)]
        try:
            statuses = sorted(o for o in outcomes if isinstance(o, int))
            assert len(accepted) == 2, f"{len(accepted)} of 8 admitted with a limit of 2"
            assert statuses == [429] * 6
        finally:
            for client in accepted:
                await client.aclose()


# --- upgrades per second per source -----------------------------------------------------------


async def test_upgrades_per_second_per_source(
    redis_server: EmbeddedRedis, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    settings = {"UPGRADES_PER_SECOND_PER_SOURCE": "0.2", "UPGRADE_BURST_PER_SOURCE": "3"}
    with gateway_process(redis_server, tmp_path, settings) as gateway:
        before = metric_value(gateway, REJECTED, cause="rate_limited")
        accepted: list[WireClient] = []
        statuses: list[int] = []
        try:
            for _ in range(6):
                try:
                    accepted.append(await WireClient.connect(gateway.ws_url, source="127.0.0.2"))
                except Refused as refusal:
                    statuses.append(refusal.status)
            assert len(accepted) == 3  # the burst
            assert statuses == [429, 429, 429]
            assert metric_value(gateway, REJECTED, cause="rate_limited") == before + 3
            # Checked before authentication: a request with a bad key is refused all the same.
            answer = await refused(gateway.ws_url, source="127.0.0.2", api_key="nobody")
            assert answer.status == 429
            # Another source address has its own budget.
            await assert_healthy(gateway, redis_client, source="127.0.0.3")
        finally:
            await close_all(accepted)


# --- sockets that never get going -------------------------------------------------------------


async def test_open_timeout(
    redis_server: EmbeddedRedis, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    settings = {"OPEN_TIMEOUT_SECONDS": "0.5", "CLOSE_TIMEOUT_SECONDS": "0.5"}
    with gateway_process(redis_server, tmp_path, settings) as gateway:
        before = metric_value(gateway, DISCONNECTS, reason="error")
        timeouts_before = metric_value(gateway, PROTOCOL_ERRORS, kind="open_timeout")
        connected_at = time.monotonic()  # before the gateway's own clock for the session starts
        client = await WireClient.connect(gateway.ws_url)
        try:
            message = await client.receive(timeout=HANG_GUARD)  # never sends `open`
            waited = time.monotonic() - connected_at
            assert message is not None
            assert message["type"] == "disconnect", message
            assert message["parameters"]["reason"] == "error"
            assert waited >= 0.5
            # It does not answer the disconnect either: the gateway drops the socket.
            await client.wait_closed(timeout=HANG_GUARD)
            assert client.close_code is not None
        finally:
            await client.aclose()
        assert metric_value(gateway, DISCONNECTS, reason="error") == before + 1
        assert metric_value(gateway, PROTOCOL_ERRORS, kind="open_timeout") == timeouts_before + 1
        await wait_for_metric(gateway, SESSIONS_ACTIVE, 0)
        await assert_healthy(gateway, redis_client)


async def test_connection_that_never_upgrades_is_closed(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """A TCP connection that sends no (or half an) upgrade request must not be held forever:
    it would escape every session limit and the open timeout (a slowloris)."""
    settings = {"OPEN_TIMEOUT_SECONDS": "0.5"}
    with gateway_process(redis_server, tmp_path, settings) as gateway:
        silent = socket.create_connection(("127.0.0.1", gateway.port))
        partial = socket.create_connection(("127.0.0.1", gateway.port))
        try:
            partial.sendall(b"GET /api/v1/audiohook/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for sock in (silent, partial):
                sock.settimeout(0.5 + HANG_GUARD)
                try:
                    data = sock.recv(1024)  # b"" (EOF) or an HTTP error, then EOF
                except TimeoutError:
                    raise AssertionError("an idle pre-upgrade connection was kept") from None
                except ConnectionResetError:
                    data = b""
                assert data == b"" or data.startswith(b"HTTP/1.1 4"), data
        finally:
            silent.close()
            partial.close()


# --- a client that stops reading --------------------------------------------------------------


def gateway_has_connection(gateway: GatewayProcess, port: int) -> bool:
    assert gateway.process is not None
    connections = psutil.Process(gateway.process.pid).net_connections(kind="tcp")
    return any(c.raddr and c.raddr.port == port for c in connections)


async def test_client_that_stops_reading_is_dropped(
    redis_server: EmbeddedRedis, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    settings = {
        "MAX_OUTGOING_QUEUE_BYTES": "200000",
        "EVENT_MESSAGES_PER_SECOND": "100000",
        "EVENT_MESSAGES_BURST": "100000",
    }
    with gateway_process(redis_server, tmp_path, settings) as gateway:
        before = metric_value(gateway, REJECTED, cause="client_not_reading")
        # A tiny receive window, and from here on the client reads nothing at all.
        client = await WireClient.connect(gateway.ws_url, receive_buffer=4096)
        port = client.local_port
        try:
            await client.open()
            control = ControlClient(redis_client)
            event: dict[str, Any] = {
                "entities": [{"type": "transcript", "data": {"text": "x" * 50_000}}]
            }
            deadline = time.monotonic() + HANG_GUARD
            while (await control.request(client.session_id, "event", **event)).result != APPLIED:
                assert time.monotonic() < deadline, "the session never registered in Redis"
                await asyncio.sleep(0.05)
            sent = 1
            # The kernel buffers take a few MB; then the gateway's own queue fills.
            while metric_value(gateway, REJECTED, cause="client_not_reading") == before:
                for _ in range(10):
                    await control.send(client.session_id, "event", **event)
                sent += 10
                assert sent < 1000, "no overflow after 50 MB of events"
                await asyncio.sleep(0.02)
            for _ in range(20):  # the consumer keeps sending after the overflow
                await control.request(client.session_id, "event", **event)
            # One dropped client, counted once.
            assert metric_value(gateway, REJECTED, cause="client_not_reading") == before + 1
            # The session ends and the gateway lets go of the socket.
            await wait_for_metric(gateway, SESSIONS_ACTIVE, 0, timeout=HANG_GUARD)
            deadline = time.monotonic() + HANG_GUARD
            while gateway_has_connection(gateway, port):
                assert time.monotonic() < deadline, "the gateway still holds the socket"
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()
        await assert_healthy(gateway, redis_client)


# --- frame and message sizes ------------------------------------------------------------------


async def test_max_frame_bytes(
    redis_server: EmbeddedRedis, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    with gateway_process(redis_server, tmp_path, {"MAX_FRAME_BYTES": "8000"}) as gateway:
        before = metric_value(gateway, PROTOCOL_ERRORS, kind="frame_too_large")
        client = await WireClient.connect(gateway.ws_url)
        try:
            await client.open()
            await client.send_audio(bytes(8000))  # at the limit: accepted
            await client.send_audio(bytes(8002))  # a whole number of samples, too large
            disconnect = await client.expect("disconnect")
            assert disconnect["parameters"]["reason"] == "error"
            assert disconnect["parameters"]["info"] == "Client Error: Audio frame too large"
            closed = await client.close("disconnect")  # the client still gets its closed
            assert closed["type"] == "closed"
        finally:
            await client.aclose()
        assert metric_value(gateway, PROTOCOL_ERRORS, kind="frame_too_large") == before + 1
        stored = await closed_session_stream(redis_client, client.session_id)
        assert [len(audio) for _, audio in stored.offsets_and_audio] == [8000]
        await assert_healthy(gateway, redis_client)


async def test_max_text_message_size(
    redis_server: EmbeddedRedis, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    with gateway_process(redis_server, tmp_path) as gateway:
        before = metric_value(gateway, PROTOCOL_ERRORS, kind="too_large")
        client = await WireClient.connect(gateway.ws_url)
        try:
            await client.open()
            ping = '{"version":"2","type":"ping","seq":2,"pad":"%s"}'
            text = ping % ("x" * (65_536 - len(ping) + 2))
            assert len(text) == 65_536  # one character over the protocol's 65,535
            await client.send_text(text)
            disconnect = await client.expect("disconnect")
            assert disconnect["parameters"]["reason"] == "error"
            assert disconnect["parameters"]["info"] == "Client Error: Message too large"
            await client.close("disconnect")
        finally:
            await client.aclose()
        assert metric_value(gateway, PROTOCOL_ERRORS, kind="too_large") == before + 1
        await assert_healthy(gateway, redis_client)


async def test_message_beyond_the_websocket_limit(
    redis_server: EmbeddedRedis, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    """Far larger messages are cut off by the WebSocket layer before they are buffered whole."""
    with gateway_process(redis_server, tmp_path) as gateway:
        for oversized in ("text", "binary"):
            client = await WireClient.connect(gateway.ws_url)
            try:
                await client.open()
                with contextlib.suppress(ConnectionError):  # reset while still writing
                    if oversized == "text":
                        await client.send_text("x" * 2_000_000)
                    else:
                        await client.send_audio(bytes(2_000_000))
                # Closed with 1009 (message too big), or reset with the rest unread.
                assert await client.wait_closed(timeout=HANG_GUARD) in (1009, None)
            finally:
                await client.aclose()
            stored = await closed_session_stream(redis_client, client.session_id)
            assert stored.offsets_and_audio == []
        await wait_for_metric(gateway, SESSIONS_ACTIVE, 0)
        await assert_healthy(gateway, redis_client)
