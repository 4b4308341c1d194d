"""An ended session is freed by reference counting alone.

A session left in a reference cycle waits for the collector's full passes, whose length grows
with every live session (hundreds of thousands of objects at 2,000 calls): each one stalls
the event loop, and so the audio of every live call. This runs a gateway in the test's own
process (real uvicorn on 127.0.0.1, real Redis, a real WebSocket client) with the cyclic
collector off, and checks that a finished call's objects (its session, its observer and
publisher, and the WebSocket and HTTP protocols that hold its transport) are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from asyncio import AbstractEventLoop
from collections.abc import Callable, Iterator

import pytest
import uvloop

from app.runtime import TICK_INTERVAL_SECONDS
from tests.integration.gateway.helpers import gateway_in_this_process
from tests.support.raw_client import RawClient
from tests.support.waiting import wait_until

FRAME = bytes(1600)  # 100 ms of stereo PCMU


# Per-call objects, by module and qualified name: the session's own and the WebSocket and HTTP
# protocols (and so the transport and handshake headers they hold).
SESSION_CLASSES = {
    "app.transport.connection.Connection",
    "app.transport.session_reporter.SessionReporter",
    "app.protocol.session.ServerSession",
    "app.publisher.session_queue.SessionPublisher",
    "app.transport.ws_protocol.AudioHookWebSocketProtocol",
    "app.transport.frames.DirectReader",  # the protocol reads through it once it took over
    "app.transport.http_guard.guarded_http_protocol.<locals>.GuardedHttpToolsProtocol",
}


def live_session_objects() -> set[str]:
    """The per-session classes that have an instance alive in this process."""
    alive = {f"{type(obj).__module__}.{type(obj).__qualname__}" for obj in gc.get_objects()}
    return alive & SESSION_CLASSES


@pytest.fixture
def without_cyclic_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_an_ended_session_is_freed_without_the_cyclic_collector(
    redis_url: str, without_cyclic_collector: None, loop_factory: Callable[[], AbstractEventLoop]
) -> None:
    # uvloop, as the gateway runs, keeps a reference to the read callback it was given.
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(call_and_check_freed(redis_url))


async def call_and_check_freed(redis_url: str) -> None:
    async with gateway_in_this_process(redis_url) as (_gateway, uri):
        assert live_session_objects() == set()
        client = await RawClient.connect(uri)
        await client.open()
        for _ in range(5):
            await client.send_audio(FRAME)
        assert live_session_objects() == SESSION_CLASSES  # what this test looks for exists
        # Live across a few ticks of the sessions' timer task, which must not keep it either.
        await asyncio.sleep(3 * TICK_INTERVAL_SECONDS)
        await client.close()
        await client.aclose()

        async def all_freed() -> bool:
            return live_session_objects() == set()

        # The gateway finishes the session, the writer its entries and the `closed` event.
        # With the collector off, an object in a reference cycle is never freed: waiting
        # cannot hide one.
        with contextlib.suppress(AssertionError):
            await wait_until(all_freed, "every session object freed", timeout=5)
        assert live_session_objects() == set()
