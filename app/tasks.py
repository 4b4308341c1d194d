"""Stopping background tasks reliably.

A cancellation that lands while redis-py waits on a socket with its own timeout can be turned
into a timeout error and swallowed by a retry, leaving the task running. `stop_task` cancels
again until the task has ended, within a grace period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("app.streams.tasks")


async def stop_task(task: asyncio.Task[Any], grace: float = 10.0) -> None:
    """Cancel `task` (repeatedly, if needed) and wait up to `grace` seconds for it to end."""
    deadline = time.monotonic() + grace
    while not task.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.error("background task did not stop", extra={"task": task.get_name()})
            return
        task.cancel()
        await asyncio.wait([task], timeout=min(0.25, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "background task failed", extra={"task": task.get_name()}, exc_info=task.exception()
        )
