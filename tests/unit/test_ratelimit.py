"""Token bucket with a hand-driven clock."""

from __future__ import annotations

import pytest

from app.ratelimit import TokenBucket
from tests.support.clock import ManualClock as Clock


def test_burst_then_sustained_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    clock.now += 10  # refill is capped at the burst
    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_pause_until_holds_everything_until_then() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10.0, burst=5, clock=clock)
    bucket.pause_until(clock.now + 2.0)  # client error 429, retryAfter 2 s
    assert not bucket.try_acquire()
    assert bucket.retry_after() == pytest.approx(2.0)
    bucket.pause_until(clock.now + 1.0)  # an earlier end never shortens the hold
    clock.now += 1.999
    assert not bucket.try_acquire()
    clock.now += 0.001
    assert bucket.try_acquire()
    assert bucket.retry_after() == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0)])
def test_bad_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)
