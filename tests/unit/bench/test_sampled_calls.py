"""The bench follows a sample of its calls for ingest latency: those calls must send in every
slot of the frame clock, or the latency measured is that of a few slots alone."""

from __future__ import annotations

import pytest

from app.bench.calls import sampled_calls
from app.bench.wsload import FRAME_SECONDS, SLOTS_PER_FRAME


def clock_slot(index: int, start_rate: float) -> int:
    """The frame-clock slot a call started `index`-th sends in (its start's phase)."""
    slot_seconds = FRAME_SECONDS / SLOTS_PER_FRAME
    return round(index / start_rate / slot_seconds) % SLOTS_PER_FRAME


@pytest.mark.parametrize(("sessions", "start_rate"), [(2000, 200.0), (1000, 200.0), (500, 100.0)])
def test_the_sampled_calls_send_in_every_slot(sessions: int, start_rate: float) -> None:
    sampled = sampled_calls(sessions, 100)
    assert len(sampled) == 100
    assert all(0 <= index < sessions for index in sampled)
    slots = {clock_slot(index, start_rate) for index in sampled}
    assert slots == set(range(SLOTS_PER_FRAME))


def test_the_sample_is_the_same_in_every_run_and_never_more_than_the_calls() -> None:
    assert sampled_calls(2000, 100) == sampled_calls(2000, 100)
    assert sampled_calls(30, 100) == set(range(30))
    assert sampled_calls(2000, 0) == set()
