"""The gateway's stop ends every background task, even one that swallowed a cancellation (as
redis-py can, turning it into a timeout it retries): the process then exits on SIGTERM."""

from __future__ import annotations

import asyncio

from app.main import create_app
from app.runtime import Gateway
from tests.integration.gateway.helpers import in_process_settings


async def test_stop_ends_a_background_task_that_swallowed_its_cancellation(
    redis_url: str,
) -> None:
    settings = in_process_settings(redis_url)
    gateway: Gateway = create_app(settings).state.gateway
    await gateway.start()
    cancellations = 0

    async def stubborn() -> None:
        nonlocal cancellations
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations > 1:
                    raise  # the first one is swallowed, as a retried timeout would be

    gateway._spawn(stubborn(), "stubborn")
    await asyncio.sleep(0)  # it is waiting in its sleep
    stopping = asyncio.create_task(gateway.stop())
    await asyncio.wait([stopping], timeout=20)  # no cancellation of its own: it must end
    try:
        assert stopping.done(), "the gateway's stop waits for ever on the stubborn task"
        assert cancellations == 2
    finally:
        stopping.cancel()
