"""Once a session is accepted, its reads go from the event loop to `DirectReader`, never
through the WebSocket protocol's own (interpreted) callback: that callback, one per read,
was a few per cent of the worker's CPU at 1,000 calls. Runs a gateway in the test's own
process (real uvicorn on 127.0.0.1, real Redis, a real WebSocket client) and watches which
of the two callbacks the event loop enters while the client streams."""

from __future__ import annotations

import asyncio
import sys
from types import FrameType
from typing import Any

import uvloop

from app.transport.frames import DirectReader
from app.transport.ws_protocol import AudioHookWebSocketProtocol
from tests.integration.gateway.helpers import gateway_in_this_process
from tests.support.raw_client import RawClient
from tests.support.waiting import wait_until

FRAME = bytes(1600)  # 100 ms of stereo PCMU
FRAMES = 5


def test_an_accepted_sessions_reads_bypass_the_protocols_own_callback(redis_url: str) -> None:
    # On uvloop, as the gateway runs: it keeps the bound callback a protocol had when it was
    # given the protocol, where asyncio's own loop looks the callback up on every read.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        entered = runner.run(stream_while_watching(redis_url))
    assert "protocol" not in entered
    assert "reader" in entered


async def stream_while_watching(redis_url: str) -> list[str]:
    """Which callbacks the event loop entered while a session's frames were read."""
    watched = {
        AudioHookWebSocketProtocol.data_received.__code__: "protocol",
        DirectReader.data_received.__code__: "reader",  # interpreted here: the test's own build
    }
    entered: list[str] = []

    def watch(frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call" and frame.f_code in watched:
            entered.append(watched[frame.f_code])

    async with (
        gateway_in_this_process(redis_url) as (gateway, uri),
        await RawClient.connect(uri) as client,
    ):
        await client.open()
        (connection,) = gateway.connections

        async def all_received() -> bool:
            return connection.session.frames_received == FRAMES

        sys.setprofile(watch)  # this thread's: the gateway's event loop is the test's
        try:
            for _ in range(FRAMES):
                await client.send_audio(FRAME)
            await wait_until(all_received, "the frames received by the session")
        finally:
            sys.setprofile(None)
        await client.close()
    return entered
