"""Upgrades-per-second limit per source address, checked before any authentication work.

Memory is bounded: at most ``max_sources`` addresses are tracked; the least recently seen
one is forgotten first (a forgotten address starts again with a full bucket, which only
errs on the side of letting a client in).
"""

from __future__ import annotations

from collections import OrderedDict

from app.ratelimit import TokenBucket


class SourceRateLimiter:
    def __init__(self, rate: float, burst: int, max_sources: int = 50_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, source: str) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = TokenBucket(rate=self.rate, burst=self.burst)
            self._buckets[source] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        return bucket.try_acquire()

    def __len__(self) -> int:
        return len(self._buckets)
