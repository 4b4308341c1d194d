"""A batch of observations lands in a histogram exactly as one observe() each would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from app.observability.metrics import FAST_LATENCY_BUCKETS, observe_many


def samples(histogram: Histogram) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in histogram.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_observe_many_matches_one_observe_each() -> None:
    amounts = [0.0, 0.0004, 0.001, 0.0011, 0.005, 0.02, 0.3, 7.5, 1e9, -1.0]
    amounts += [FAST_LATENCY_BUCKETS[0], FAST_LATENCY_BUCKETS[-1]]  # exactly on a bound
    one_by_one = Histogram("h", "h", buckets=FAST_LATENCY_BUCKETS, registry=CollectorRegistry())
    batched = Histogram("h", "h", buckets=FAST_LATENCY_BUCKETS, registry=CollectorRegistry())
    for amount in amounts:
        one_by_one.observe(amount)
    observe_many(batched, amounts[:5])
    observe_many(batched, [])
    observe_many(batched, amounts[5:])
    expected = samples(one_by_one)
    got = samples(batched)
    assert got.pop(("h_sum", ())) == pytest.approx(expected.pop(("h_sum", ())))  # added in
    assert got == expected  # another order; every bucket and the count exactly
    assert got[("h_count", ())] == len(amounts)
