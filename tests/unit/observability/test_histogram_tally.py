"""Observations tallied and flushed land in a histogram exactly as one observe() each would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from app.observability.histogram_tally import HistogramTally
from app.observability.metrics import FAST_LATENCY_BUCKETS


def samples(histogram: Histogram) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in histogram.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def histogram() -> Histogram:
    return Histogram("h", "h", buckets=FAST_LATENCY_BUCKETS, registry=CollectorRegistry())


def test_a_flushed_tally_matches_one_observe_each() -> None:
    amounts = [0.0, 0.0004, 0.001, 0.0011, 0.005, 0.02, 0.3, 7.5, 1e9, -1.0]
    amounts += [FAST_LATENCY_BUCKETS[0], FAST_LATENCY_BUCKETS[-1]]  # exactly on a bound
    one_by_one, batched = histogram(), histogram()
    for amount in amounts:
        one_by_one.observe(amount)
    tally = HistogramTally(batched)
    empty = samples(batched)
    for amount in amounts[:5]:
        tally.observe(amount)
    assert samples(batched) == empty  # nothing lands before a flush
    tally.flush()
    tally.flush()  # nothing new: nothing added twice
    for amount in amounts[5:]:
        tally.observe(amount)
    tally.flush()
    expected = samples(one_by_one)
    got = samples(batched)
    assert got.pop(("h_sum", ())) == pytest.approx(expected.pop(("h_sum", ())))  # added in
    assert got == expected  # every bucket and the count exactly
    assert got[("h_count", ())] == len(amounts)


def test_a_histogram_with_labels_is_refused() -> None:
    labelled = Histogram("l", "l", ["kind"], registry=CollectorRegistry())
    with pytest.raises(TypeError):
        HistogramTally(labelled)
