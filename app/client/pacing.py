"""One clock for many simulated calls: a single timer ticks every frame interval and wakes
every session waiting on it, instead of one timer per session per frame."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from app.client.audio import FRAME_SAMPLES
from app.protocol.media import SAMPLE_RATE

FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE


class Pacer:
    """Counts ticks of `interval` seconds while anyone uses it (see `use()`).

    Ticks are scheduled on an absolute grid, so they do not drift; if the loop falls
    behind, the tick count jumps and callers catch up by sending the frames they owe.
    """

    def __init__(self, interval: float = FRAME_SECONDS) -> None:
        self.interval = interval
        self.tick = 0
        self._users = 0
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def use(self) -> Iterator[None]:
        self._users += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield
        finally:
            self._users -= 1

    async def wait(self) -> int:
        """Wait for the next tick (inside `use()`); returns the tick count."""
        await self._event.wait()
        return self.tick

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start, step = loop.time(), 0
        while self._users > 0:
            step += 1
            await asyncio.sleep(max(0.0, start + step * self.interval - loop.time()))
            behind = int((loop.time() - start) / self.interval)
            self.tick += max(1, behind - step + 1)
            step = max(step, behind)
            event, self._event = self._event, asyncio.Event()
            event.set()
