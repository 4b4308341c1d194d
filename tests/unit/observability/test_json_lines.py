"""Records made without source location, thread and process (`configure_logging` turns them
off, for speed) are written exactly as records made with them: the JSON line never had them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from app.observability.logging import JsonFormatter, skip_unwritten_record_attributes

SWITCHES = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")


@pytest.fixture
def restored_switches() -> Iterator[None]:
    saved = {name: getattr(logging, name) for name in SWITCHES}
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(logging, name, value)


def _line(logger: logging.Logger) -> str:
    made: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            made.append(record)

    logger.addHandler(Keep())
    try:
        logger.info("session %s", "opened", extra={"session_id": "s-1", "frames": 3})
    finally:
        logger.handlers.clear()
    record = made[0]
    record.created, record.msecs = 1_700_000_000.25, 250.0  # the two lines' times agree
    return JsonFormatter().format(record)


def test_lines_are_the_same_without_the_unwritten_attributes(restored_switches: None) -> None:
    logger = logging.getLogger("tests.json_lines")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    full = _line(logger)
    skip_unwritten_record_attributes()
    assert logging.logThreads is False  # the switches are really off for the second line
    assert _line(logger) == full
    assert json.loads(full) == {
        "time": "2023-11-14T22:13:20.250Z",
        "level": "INFO",
        "logger": "tests.json_lines",
        "message": "session opened",
        "session_id": "s-1",
        "frames": 3,
    }


def test_each_line_has_its_own_second_and_milliseconds() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("app", logging.INFO, "", 0, "tick", None, None)
    stamps = []
    for created in (1_700_000_000.5, 1_700_000_000.75, 1_700_000_001.0, 1_699_999_999.125):
        record.created, record.msecs = created, (created - int(created)) * 1000
        stamps.append(json.loads(formatter.format(record))["time"])
    assert stamps == [
        "2023-11-14T22:13:20.500Z",
        "2023-11-14T22:13:20.750Z",
        "2023-11-14T22:13:21.000Z",
        "2023-11-14T22:13:19.125Z",
    ]
