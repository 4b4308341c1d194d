"""A plain upgrade starts the WebSocket protocol from the HTTP parse (app/transport/handshake.py)
and is answered as the general way answers: the same 101, and a call that works. A gateway in
the test's own process (real uvicorn on 127.0.0.1, real Redis, real WebSocket clients), so
that which way an upgrade went can be seen."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.http11 import Response

from app.transport.ws_protocol import AudioHookWebSocketProtocol
from tests.integration.gateway.helpers import gateway_in_this_process
from tests.support.raw_client import RawClient


def head(response: Response | None) -> tuple[int, list[tuple[str, str]]]:
    """Status and headers, less the two that differ from one answer to the next."""
    assert response is not None
    headers = sorted(
        (name.lower(), value)
        for name, value in response.headers.raw_items()
        if name.lower() not in ("date", "sec-websocket-accept")
    )
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
