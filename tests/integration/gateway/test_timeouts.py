"""Session timeouts over a gateway configured with short ones: no `open`, no traffic, and a
client that never closes its socket. Each is answered no sooner than its limit while a good
call on the same gateway carries on."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
import redis.asyncio

from app.config import Settings
from app.redis.embedded import EmbeddedRedis
from app.server import uvicorn_config
from tests.integration.gateway.helpers import alongside_good_call, running_gateway
from tests.integration.resilience.wire import WireClient
from tests.support.gateway_process import GatewayProcess
from tests.support.raw_client import RawClient

OPEN_TIMEOUT = 0.6
IDLE_TIMEOUT = 1.0
CLOSE_TIMEOUT = 0.8


@pytest.fixture(scope="module")
def short_timeouts_gateway(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    settings = {
        "OPEN_TIMEOUT_SECONDS": str(OPEN_TIMEOUT),
        "IDLE_TIMEOUT_SECONDS": str(IDLE_TIMEOUT),
        "CLOSE_TIMEOUT_SECONDS": str(CLOSE_TIMEOUT),
    }
    with running_gateway(redis_server, tmp_path_factory.mktemp("timeouts"), settings) as gateway:
        yield gateway


async def test_open_timeout(
    short_timeouts_gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    uri = short_timeouts_gateway.ws_url
    async with alongside_good_call(uri, gateway_redis), await RawClient.connect(uri) as client:
        disconnect = await client.expect_disconnect("error", clientseq=0)
        assert disconnect.received_at - client.connect_started_at >= OPEN_TIMEOUT
        assert "open" in disconnect.info.lower()
        closed = await client.close("disconnect")
        assert closed.clientseq == 1


async def test_idle_timeout(
    short_timeouts_gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    uri = short_timeouts_gateway.ws_url
    async with alongside_good_call(uri, gateway_redis), await RawClient.connect(uri) as client:
        await client.open()
        await client.send_audio(b"\xff" * 3200)
        last_sent = time.monotonic()
        disconnect = await client.expect_disconnect("error", timeout=IDLE_TIMEOUT + 3)
        assert disconnect.received_at - last_sent >= IDLE_TIMEOUT
        assert "idle" in disconnect.info.lower()
        await client.close("disconnect")


async def test_any_message_keeps_a_session_alive(short_timeouts_gateway: GatewayProcess) -> None:
    async with await RawClient.connect(short_timeouts_gateway.ws_url) as client:
        await client.open()
        for _ in range(6):  # 1.8 s in all, more than the idle timeout
            await asyncio.sleep(IDLE_TIMEOUT * 0.3)
            await client.send("ping")
            await client.expect("pong")
        await client.close()
        client.assert_conformant()


async def test_a_client_that_ignores_disconnect_is_dropped(
    short_timeouts_gateway: GatewayProcess,
) -> None:
    async with await RawClient.connect(short_timeouts_gateway.ws_url) as client:
        disconnect = await client.expect_disconnect("error", clientseq=0)
        code = await client.expect_socket_closed(timeout=CLOSE_TIMEOUT + 3)
        assert time.monotonic() - disconnect.received_at >= CLOSE_TIMEOUT * 0.9
        assert code is not None
        assert code != 1000


async def test_a_client_that_keeps_its_socket_after_closed_is_dropped(
    short_timeouts_gateway: GatewayProcess,
) -> None:
    async with await RawClient.connect(short_timeouts_gateway.ws_url) as client:
        await client.open()
        closed = await client.close()
        code = await client.expect_socket_closed(timeout=CLOSE_TIMEOUT + 3)
        assert time.monotonic() - closed.received_at >= CLOSE_TIMEOUT * 0.9
        assert code == 1000


TCP_CLOSE_WAIT = 8  # Linux's tcp_info state: the peer has closed its side


async def test_a_client_that_vanishes_mid_call_is_dropped_by_the_session_deadlines(
    short_timeouts_gateway: GatewayProcess,
) -> None:
    """A peer that stops sending and reading (gone without a FIN) is ended by the idle
    timeout, then the close timeout, which drop the socket whether or not it reads again."""
    client = await WireClient.connect(short_timeouts_gateway.ws_url)
    try:
        await client.open()
        await client.send_audio(b"\xff" * 3200)
        await asyncio.sleep(IDLE_TIMEOUT + CLOSE_TIMEOUT + 1.5)  # neither reading nor sending
        sock = client.writer.get_extra_info("socket")
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        assert state == TCP_CLOSE_WAIT  # the gateway closed its side while we never read
        await client.wait_closed(timeout=2)
        assert client.messages[-1]["type"] == "disconnect"
        assert "idle" in client.messages[-1]["parameters"]["info"].lower()
    finally:
        await client.aclose()


def test_websocket_keepalive_pings_bound_a_client_that_never_reads() -> None:
    """A client that sends audio but never reads is not idle; it answers no WebSocket ping, so
    uvicorn's keepalive drops it within interval + timeout (its pongs, events and a consumer's
    pause would otherwise go unseen for as long as it sends)."""
    config = uvicorn_config(object(), "127.0.0.1", 0, Settings())
    assert config.ws_ping_interval is not None
    assert config.ws_ping_timeout is not None
    assert config.ws_ping_interval + config.ws_ping_timeout <= 60
