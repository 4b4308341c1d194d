"""The logger uvicorn and websockets write to for each WebSocket connection: what "uvicorn.error"
with its filter would write, and no record at all for the per-connection lines it drops."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from app.observability.logging import CONNECTION_LOG, LISTENER, UPGRADE_REFUSED


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def written() -> Iterator[list[logging.LogRecord]]:
    root = logging.getLogger()
    handlers = root.handlers[:]
    capture = Records()
    root.handlers[:] = [capture]
    try:
        yield capture.records
    finally:
        root.handlers[:] = handlers


def test_per_connection_info_lines_make_no_record(
    written: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    factory = logging.getLogRecordFactory()

    def counting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        made.append(record.getMessage())
        return record

    monkeypatch.setattr(logging, "_logRecordFactory", counting_factory)
    CONNECTION_LOG.info("connection open")
    CONNECTION_LOG.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:1", "/ws")
    CONNECTION_LOG.info("HTTP response sent (%d %s)", 401, "Unauthorized")  # a refusal
    assert (made, written) == ([], [])


def test_other_lines_are_written_as_uvicorn_error_with_its_filter(
    written: list[logging.LogRecord],
) -> None:
    token = LISTENER.set("audiohook")
    try:
        CONNECTION_LOG.info("Started server process [%d]", 7)
        CONNECTION_LOG.error("opening handshake failed")
        refused = UPGRADE_REFUSED.set(True)
        CONNECTION_LOG.error("ASGI callable returned without completing handshake.")
        UPGRADE_REFUSED.reset(refused)
    finally:
        LISTENER.reset(token)
    assert [(r.name, r.levelname, r.getMessage()) for r in written] == [
        ("uvicorn.error", "INFO", "Started server process [7]"),
        ("uvicorn.error", "ERROR", "opening handshake failed"),
    ]
    assert all(getattr(r, "listener", None) == "audiohook" for r in written)
