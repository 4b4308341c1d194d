"""RFC 6455 on the wire of an accepted session, where the gateway parses frames itself:
fragments, control frames between them, the close handshake and the failures (1002, 1007)."""

from __future__ import annotations

import redis.asyncio
from websockets.frames import Frame, Opcode

from tests.integration.resilience.wire import WireClient
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import PROTOCOL_ERRORS, MetricDelta
from tests.support.session_streams import closed_session_stream

FRAME = bytes(range(256)) * 12 + bytes(128)  # 3,200 bytes: 200 ms of stereo PCMU


async def test_fragmented_messages_with_pings_between_fragments(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    client = await WireClient.connect(gateway.ws_url)
    try:
        await client.open()
        second = FRAME[7:] + FRAME[:7]
        protocol = client.protocol
        protocol.send_binary(FRAME[:1000], fin=False)
        protocol.send_ping(b"between")
        protocol.send_continuation(FRAME[1000:3000], fin=False)
        protocol.send_continuation(FRAME[3000:], fin=True)
        protocol.send_binary(second)
        await client._flush()
        client.counters.position += len(FRAME)  # two frames of two bytes per sample
        # an AudioHook `ping` in three fragments, a WebSocket ping inside
        text = client.counters.message("ping", {}).encode()
        protocol.send_text(text[:5], fin=False)
        protocol.send_continuation(text[5:9], fin=False)
        protocol.send_ping(b"again")
        protocol.send_continuation(text[9:], fin=True)
        await client._flush()
        assert (await client.receive())["type"] == "pong"  # type: ignore[index]
        assert client.pongs == [b"between", b"again"]
        await client.close()
    finally:
        await client.aclose()
    stream = await closed_session_stream(gateway_redis, client.session_id)
    assert stream.frames == [FRAME, second]
    assert stream.offsets == [0, len(FRAME) // 2]


async def test_the_client_close_frame_is_answered_with_its_code(gateway: GatewayProcess) -> None:
    client = await WireClient.connect(gateway.ws_url)
    try:
        await client.open()
        await client.close()
        client.protocol.send_close(1000, "done")
        await client._flush()
        assert await client.wait_closed() == 1000
    finally:
        await client.aclose()


async def write_raw(client: WireClient, data: bytes) -> None:
    client.writer.write(data)
    await client.writer.drain()


async def test_invalid_utf8_text_fails_the_connection_with_1007(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    violations = MetricDelta(gateway, PROTOCOL_ERRORS)
    client = await WireClient.connect(gateway.ws_url)
    try:
        await client.open()
        await client.send_audio(FRAME)
        await write_raw(client, Frame(Opcode.TEXT, b'{"type":"\xff"}').serialize(mask=True))
        assert await client.wait_closed() == 1007
    finally:
        await client.aclose()
    stream = await closed_session_stream(gateway_redis, client.session_id)
    assert stream.frames == [FRAME]  # what came before it is kept
    assert stream.event_data("closed")["reason"] is None  # the socket went, no `close`
    assert violations.delta() == 0  # never reached the AudioHook protocol


async def test_an_unmasked_client_frame_fails_the_connection_with_1002(
    gateway: GatewayProcess,
) -> None:
    client = await WireClient.connect(gateway.ws_url)
    try:
        await client.open()
        await write_raw(client, Frame(Opcode.BINARY, FRAME).serialize(mask=False))
        assert await client.wait_closed() == 1002
    finally:
        await client.aclose()
