"""Observations of a histogram, counted where they happen and added to it in one go.

prometheus_client's `observe()` takes two locks and runs interpreted code; the publisher has
a latency for every audio frame (thousands a second), so it counts them here (compiled in the
compiled build: pyproject.toml, compiled-modules), and adds the counts to the histogram a few
times a second.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Histogram


class HistogramTally:
    """Counts per bucket and their sum, added to `histogram` by `flush`: for any amount but
    NaN (which this counts in the first bucket), the same samples as one `observe()` each.
    prometheus_client has no bulk observe, so this adds to the fields its `observe()` does."""

    __slots__ = ("_bounds", "_buckets", "_counts", "_sum", "_sum_value")

    def __init__(self, histogram: Histogram) -> None:
        bounds: Any = getattr(histogram, "_upper_bounds", None)
        buckets: Any = getattr(histogram, "_buckets", None)
        total: Any = getattr(histogram, "_sum", None)
        if bounds is None or buckets is None or total is None:
            raise TypeError("not a prometheus_client histogram without labels")
        self._bounds: list[float] = [float(bound) for bound in bounds]  # the last is +Inf
        self._buckets: list[Any] = list(buckets)
        self._sum_value: Any = total
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        bounds = self._bounds
        index = 0
        while amount > bounds[index]:  # the first bucket with amount <= its bound
            index += 1
        self._counts[index] += 1
        self._sum += amount

    def flush(self) -> int:
        """Add what was observed since the last flush; how many amounts that was."""
        counts = self._counts
        observed = 0
        for index, count in enumerate(counts):
            if count:
                self._buckets[index].inc(count)
                counts[index] = 0
                observed += count
        if observed:
            self._sum_value.inc(self._sum)
            self._sum = 0.0
        return observed
