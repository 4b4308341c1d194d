"""Refusal lines are throttled per cause: a flood of connections cannot flood the log."""

from __future__ import annotations

import logging

import pytest

from app.observability.logging import MAX_VALUE_CHARS, JsonFormatter, ThrottledLog, refusal_log
from app.observability.metrics import LOG_LINES_SUPPRESSED


def suppressed_total() -> float:
    return LOG_LINES_SUPPRESSED._value.get()


def test_lines_past_the_rate_are_counted_and_summed_up_in_the_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.throttled")
    throttled = ThrottledLog(logger, per_second=5.0)
    before = suppressed_total()
    with caplog.at_level(logging.INFO, logger="test.throttled"):
        for _ in range(1000):  # far faster than 5 a second
            throttled.log(logging.WARNING, "rate_limited", "upgrade refused", {"n": 1})
        throttled.log(logging.WARNING, "bad_request", "upgrade refused", {"n": 2})
    by_cause = [record for record in caplog.records if getattr(record, "n", None) == 1]
    assert 5 <= len(by_cause) <= 6  # the burst, plus what the rate refilled meanwhile
    assert len([r for r in caplog.records if getattr(r, "n", None) == 2]) == 1  # own budget
    assert suppressed_total() - before == 1000 - len(by_cause)


def test_a_line_after_a_quiet_spell_says_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr("app.observability.logging.time.monotonic", lambda: clock[0])
    throttled = ThrottledLog(logging.getLogger("test.quiet"), per_second=2.0)
    with caplog.at_level(logging.INFO, logger="test.quiet"):
        for _ in range(10):
            throttled.log(logging.WARNING, "cause", "refused", {})
        clock[0] += 1.0
        throttled.log(logging.WARNING, "cause", "refused", {})
    assert len(caplog.records) == 3
    assert getattr(caplog.records[-1], "similar_lines_suppressed", None) == 8


def test_a_refusal_flood_writes_its_burst_then_a_line_a_second_per_cause(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr("app.observability.logging.time.monotonic", lambda: clock[0])
    refusals = refusal_log(logging.getLogger("test.flood"))
    with caplog.at_level(logging.INFO, logger="test.flood"):
        for _ in range(10_000):  # 1,000 refusals a second for ten seconds
            refusals.log(logging.WARNING, "rate_limited", "upgrade refused", {"n": 1})
            clock[0] += 0.001
        refusals.log(logging.WARNING, "bad_request", "upgrade refused", {"n": 2})
    flood = [record.__dict__ for record in caplog.records if record.__dict__["n"] == 1]
    assert len(flood) == 20 + 9  # the burst, then one line for each second after the first
    assert all("similar_lines_suppressed" not in line for line in flood[:20])
    left_out = [line["similar_lines_suppressed"] for line in flood[20:]]
    assert abs(left_out[0] - 980) <= 1  # the rest of the first second
    assert all(abs(count - 999) <= 1 for count in left_out[1:])  # each a second's worth
    assert len(caplog.records) == len(flood) + 1  # another cause has its own burst


def test_client_values_are_clipped_in_every_line() -> None:
    record = logging.LogRecord("x", logging.INFO, "", 0, "m" * 5000, None, None)
    record.correlation_id = "c" * 4000
    line = JsonFormatter().format(record)
    assert "c" * (MAX_VALUE_CHARS + 1) not in line
    assert "c" * MAX_VALUE_CHARS in line
    assert len(line) < 3000
