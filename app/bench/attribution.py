"""Where the bench's ingest latency goes: the gateway's own share, and Redis waiting for a core.

The bench's ingest latency runs from the client's send to the entry's arrival at a reader in
another process (app/bench/streams.py). Two figures split it:

- the gateway's receipt-to-acknowledgement time, from its own histogram
  `audiohook_publish_latency_seconds` (read at the start and the end of the window with every
  call live, so the ramp is left out): the share of frames Redis acknowledged within 10 and
  20 ms of the gateway reading them;
- Redis's run-queue wait (Linux `/proc/PID/schedstat`): the share of wall time Redis was
  ready to run but waited for its core, which `bench --spawn` shares with the load generator
  and the latency sampler. Each round trip of the gateway waits for it too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

PUBLISH_LATENCY = "audiohook_publish_latency_seconds"


def run_queue_wait_seconds(pid: int) -> float | None:
    """Seconds process `pid` has spent ready to run but waiting for a CPU (None off Linux)."""
    try:
        fields = Path(f"/proc/{pid}/schedstat").read_text().split()
    except OSError:
        return None
    return int(fields[1]) / 1e9


def _publish_buckets(metrics_text: str) -> dict[float, float]:
    """Cumulative counts of the publish-latency histogram, by upper bound (seconds)."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == PUBLISH_LATENCY:
            return {
                float(sample.labels["le"]): sample.value
                for sample in family.samples
                if sample.name.endswith("_bucket")
            }
    return {}


class PublishLatencyWindow:
    """The gateway's publish-latency histogram between two readings of its metrics."""

    def __init__(self, metrics_url: str) -> None:
        self._url = f"{metrics_url.rstrip('/')}/metrics"
        self._first: dict[float, float] | None = None
        self._last: dict[float, float] | None = None

    @property
    def started(self) -> bool:
        return self._first is not None

    @property
    def ended(self) -> bool:
        return self._last is not None

    async def _read(self) -> dict[float, float] | None:
        try:
            response = await asyncio.to_thread(httpx.get, self._url, timeout=5.0)
        except httpx.HTTPError:
            return None
        return _publish_buckets(response.text) if response.status_code == 200 else None

    async def start(self) -> None:
        self._first = await self._read()

    async def end(self) -> None:
        self._last = await self._read()

    def share_within(self, seconds: float) -> float | None:
        """Percentage of the window's frames acknowledged within `seconds` (a bucket bound)."""
        if not self._first or not self._last:
            return None
        total = self._last[float("inf")] - self._first[float("inf")]
        if seconds not in self._last or total <= 0:
            return None
        return round((self._last[seconds] - self._first[seconds]) / total * 100, 2)
