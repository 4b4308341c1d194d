"""Audio counts wait in a per-integration tally and reach the counters once per flush."""

from __future__ import annotations

from prometheus_client import REGISTRY

from app.transport.session_reporter import audio_tally, flush_audio_tallies


def counted(integration: str) -> tuple[float | None, ...]:
    """Frames, bytes and seconds counted for `integration` (None: never counted)."""
    return tuple(
        REGISTRY.get_sample_value(name, {"integration": integration})
        for name in (
            "audiohook_audio_frames_received_total",
            "audiohook_audio_received_bytes_total",
            "audiohook_audio_received_seconds_total",
        )
    )


def test_sessions_of_an_integration_share_a_tally_flushed_once() -> None:
    first, second = audio_tally("tally-a"), audio_tally("tally-a")
    assert first is second
    other = audio_tally("tally-b")
    for _ in range(3):
        first.frames += 1
        first.size += 1600
        first.samples += 1600
    other.frames += 1
    other.size += 800
    other.samples += 800
    assert counted("tally-a") == (0.0, 0.0, 0.0)  # nothing is counted before a flush

    flush_audio_tallies()
    assert counted("tally-a") == (3.0, 4800.0, 0.6)
    assert counted("tally-b") == (1.0, 800.0, 0.1)
    assert (first.frames, first.size, first.samples) == (0, 0, 0)

    flush_audio_tallies()  # nothing new: nothing added twice
    assert counted("tally-a") == (3.0, 4800.0, 0.6)
