"""One task drives every session's deadlines (open, idle, close): a session whose timer and
whose error path both fail must not stop it. That session's socket is dropped; the others
keep their timers. A gateway in the test's own process (real uvicorn on 127.0.0.1, real
Redis, real WebSocket clients), so that one session can be broken from inside."""

from __future__ import annotations

import asyncio

from app.runtime import TICK_INTERVAL_SECONDS
from tests.integration.gateway.helpers import gateway_in_this_process
from tests.support.raw_client import RawClient


class BrokenSession:
    """Stands in for a session whose every use fails (a bug of ours, not the client's)."""

    def __getattr__(self, name: str) -> object:
        raise RuntimeError(f"broken session: {name}")


async def test_a_session_broken_beyond_its_error_path_is_dropped_and_the_ticker_goes_on(
    redis_url: str,
) -> None:
    async with (
        gateway_in_this_process(redis_url) as (gateway, uri),
        await RawClient.connect(uri) as broken_client,
        await RawClient.connect(uri) as good_client,
    ):
        await broken_client.open()
        await good_client.open()
        (broken,) = [c for c in gateway.connections if c.session_id == broken_client.session_id]
        broken.session = BrokenSession()  # type: ignore[assignment]
        # Its next tick fails, and so does `disconnect`: the socket is dropped.
        assert await broken_client.expect_socket_closed(timeout=5) != 1000
        await asyncio.sleep(3 * TICK_INTERVAL_SECONDS)
        (ticker,) = [task for task in asyncio.all_tasks() if task.get_name() == "session-ticker"]
        assert not ticker.done()
        await good_client.send("ping")
        await good_client.expect("pong")
        await good_client.close()
