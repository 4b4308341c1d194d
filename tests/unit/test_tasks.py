"""stop_task ends tasks even when one cancellation is swallowed."""

from __future__ import annotations

import asyncio
import contextlib

from app.tasks import stop_task


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    swallowed = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.append(1)  # what a retry loop around a socket read may do
        await asyncio.sleep(30)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await stop_task(task, grace=5)
    assert task.cancelled()
    assert swallowed == [1]


async def test_gives_up_after_the_grace_period() -> None:
    immortal = True

    async def refuses_to_stop() -> None:
        while immortal:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)

    task = asyncio.create_task(refuses_to_stop())
    await asyncio.sleep(0)
    await stop_task(task, grace=0.3)
    assert not task.done()
    immortal = False
    task.cancel()
    await task
