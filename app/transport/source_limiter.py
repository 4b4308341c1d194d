"""Limits per source address, checked before any authentication work.

- `SourceRateLimiter`: upgrades per second. Memory is bounded: at most ``max_sources``
  addresses are tracked; the least recently seen one is forgotten first (a forgotten address
  starts again with a full bucket, which only errs on the side of letting a client in).
- `SourceConnectionLimit`: connections at a time that have not sent their request head.
  Memory is bounded by the open connections: an address leaves with its last one.
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


class SourceConnectionLimit:
    """At most `limit` connections at a time per source address in one state (the HTTP
    guard's: the request head not complete yet). `hold` takes a place, `release` gives it
    back; each place held is released exactly once."""

    __slots__ = ("_held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def hold(self, source: str) -> bool:
        """Take a place for `source`; False (nothing taken) when it holds `limit` already."""
        count = self._held.get(source, 0)
        if count >= self.limit:
            return False
        self._held[source] = count + 1
        return True

    def release(self, source: str) -> None:
        count = self._held[source] - 1
        if count:
            self._held[source] = count
        else:
            del self._held[source]

    def held(self, source: str) -> int:
        return self._held.get(source, 0)

    def __len__(self) -> int:
        """Addresses holding a place."""
        return len(self._held)
