"""A token bucket with an injected clock, plus a hold for a client's `retryAfter`."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, at most `burst` stored; starts full.

    `pause_until(t)` refuses everything before clock time `t` (a client `error` 429 asked us
    to back off); the bucket keeps refilling meanwhile, as the client only asked for a pause.
    """

    __slots__ = ("_clock", "_held_until", "_stamp", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._held_until = float("-inf")

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def try_acquire(self, tokens: float = 1.0) -> bool:
        now = self._clock()
        self._refill(now)
        if now < self._held_until or self._tokens < tokens:
            return False
        self._tokens -= tokens
        return True

    def pause_until(self, until: float) -> None:
        """Refuse until clock time `until` (the later of this and any earlier hold)."""
        self._held_until = max(self._held_until, until)

    def retry_after(self, tokens: float = 1.0) -> float:
        """Seconds until try_acquire(tokens) can succeed (0.0 when it can now)."""
        now = self._clock()
        self._refill(now)
        wait_tokens = max(0.0, (tokens - self._tokens) / self.rate)
        return max(wait_tokens, self._held_until - now, 0.0)
