"""A plain upgrade starts the WebSocket protocol from the HTTP parse (app/transport/handshake.py)
and is answered as the general way answers: the same 101, and a call that works. A gateway in
the test's own process (real uvicorn on 127.0.0.1, real Redis, real WebSocket clients), so
that which way an upgrade went can be seen."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.http11 import Response

from app.server import uvicorn_config
from app.transport.ws_protocol import AudioHookWebSocketProtocol
from tests.integration.gateway.helpers import gateway_in_this_process, in_process_settings
from tests.support.raw_client import RawClient


def head(response: Response | None) -> tuple[int, list[tuple[str, str]]]:
    """Status and headers in order, the two values that differ from one answer to the next
    masked."""
    assert response is not None
    headers = [
        (name, "" if name.lower() in ("date", "sec-websocket-accept") else value)
        for name, value in response.headers.raw_items()
    ]
    return response.status_code, headers


async def test_a_plain_upgrade_skips_the_second_parse_and_is_answered_as_before(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[bytes] = []
    start_plain = AudioHookWebSocketProtocol.start_plain

    def counted(protocol: AudioHookWebSocketProtocol, *args: Any) -> None:
        started.append(args[-1])  # the key
        start_plain(protocol, *args)

    monkeypatch.setattr(AudioHookWebSocketProtocol, "start_plain", counted)
    responses = []
    async with gateway_in_this_process(redis_url) as (_, uri):
        # A subprotocol offer sends the second upgrade the general way (websockets parses it).
        for extra in ({}, {"Sec-WebSocket-Protocol": "audiohook"}):
            async with await RawClient.connect(uri, headers=extra) as client:
                await client.open()
                await client.send_audio(b"\xff" * 320)
                await client.close()
                responses.append(client.ws.response)
    assert len(started) == 1  # the plain one only
    plain, general = responses
    assert head(plain) == head(general)
    assert head(plain)[0] == 101


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Another WebSocket application behind the same protocols: accept, then one message
    back through ASGI `receive` (the AudioHook endpoint takes its messages over instead)."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    message = await receive()
    await send({"type": "websocket.send", "text": message["text"]})
    await send({"type": "websocket.close", "code": 1000})


async def test_after_a_plain_accept_messages_reach_the_application_through_asgi(
    redis_url: str,
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn_config(echo, "127.0.0.1", port, in_process_settings(redis_url))
    config.lifespan = "off"  # the application is only the echo
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
            async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
    finally:
        server.should_exit = True
        await task
