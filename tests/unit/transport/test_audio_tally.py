"""Audio counts wait in a per-integration tally and reach the counters once per flush."""

from __future__ import annotations

from prometheus_client import REGISTRY

from app.transport.session_reporter import audio_tally, flush_audio_tallies


def counted(integration: str) -> tuple[float, ...]:
    """Frames, bytes and seconds counted for `integration` so far."""
    return tuple(
        REGISTRY.get_sample_value(name, {"integration": integration}) or 0.0
        for name in (
            "audiohook_audio_frames_received_total",
            "audiohook_audio_received_bytes_total",
            "audiohook_audio_received_seconds_total",
        )
    )


def grown(before: tuple[float, ...], integration: str) -> tuple[float, ...]:
    after = counted(integration)
    return tuple(round(now - then, 9) for now, then in zip(after, before, strict=True))


def test_sessions_of_an_integration_share_a_tally_flushed_once() -> None:
    first, second = audio_tally("tally-a"), audio_tally("tally-a")
    assert first is second
    other = audio_tally("tally-b")
    before_a, before_b = counted("tally-a"), counted("tally-b")
    for _ in range(3):
        first.frames += 1
        first.size += 1600
        first.samples += 1600
    other.frames += 1
    other.size += 800
    other.samples += 800
    assert grown(before_a, "tally-a") == (0, 0, 0)  # nothing is counted before a flush

    flush_audio_tallies()
    assert grown(before_a, "tally-a") == (3, 4800, 0.6)
    assert grown(before_b, "tally-b") == (1, 800, 0.1)
    assert (first.frames, first.size, first.samples) == (0, 0, 0)

    flush_audio_tallies()  # nothing new: nothing added twice
    assert grown(before_a, "tally-a") == (3, 4800, 0.6)
