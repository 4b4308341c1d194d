"""JSON-lines logging.

Every record becomes one JSON object with time, level, logger and message, plus the
structured fields passed as ``extra={...}`` (session_id, correlation_id, conversation_id,
integration, reason, ...). Audio, secrets and signature values are never passed here.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

from app.observability.metrics import LOG_LINES_SUPPRESSED

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)
# Longest string value written for a field or message: many come from client headers.
MAX_VALUE_CHARS = 256
MAX_MESSAGE_CHARS = 2048
_MAX_THROTTLE_KEYS = 1024
# uvicorn adds a terminal-coloured copy of some messages.
_IGNORED_ATTRIBUTES = _STANDARD_ATTRIBUTES | {"color_message"}


class JsonFormatter(logging.Formatter):
    # The last record's whole second and its text: most records share it with the one before.
    _second = -1
    _second_text = ""

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": _clip(record.getMessage(), MAX_MESSAGE_CHARS),
        }
        for key, value in record.__dict__.items():
            if key not in _IGNORED_ATTRIBUTES and not key.startswith("_"):
                entry[key] = _clip(value, MAX_VALUE_CHARS) if type(value) is str else value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# uvicorn's and websockets' lines about each connection (under "uvicorn.error"). Connections
# are the client's to open: the gateway's own lines say what matters, throttled where a client
# can multiply them, so these would only let a flood of connections flood the log.
_PER_CONNECTION_MESSAGES = frozenset(
    {
        "connection open",
        "connection closed",
        "connection rejected (%d %s)",
        "HTTP response sent (%d %s)",  # an upgrade refused with an HTTP status
        "Invalid UTF-8 sequence received from client.",
        '%s - "WebSocket %s" [accepted]',
        '%s - "WebSocket %s" 403',
        '%s - "WebSocket %s" %d',
    }
)


# Which listener (audiohook, metrics) a uvicorn line is about: set in each server's task.
LISTENER: contextvars.ContextVar[str | None] = contextvars.ContextVar("listener", default=None)
# Set when the application answered an upgrade with a refusal (403, 429, 503, ...): uvicorn
# then says "ASGI callable returned without completing handshake" at ERROR, but a refusal is
# normal and already logged by the gateway with its cause.
UPGRADE_REFUSED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "upgrade_refused", default=False
)
_HANDSHAKE_NOT_COMPLETED = "ASGI callable returned without completing handshake."


def _uvicorn_line(record: logging.LogRecord) -> bool:
    if record.msg == _HANDSHAKE_NOT_COMPLETED and UPGRADE_REFUSED.get():
        return False
    if record.msg in _PER_CONNECTION_MESSAGES:
        return False
    listener = LISTENER.get()
    if listener is not None and not hasattr(record, "listener"):
        record.listener = listener
    return True


class _ConnectionLogger(logging.Logger):
    """The logger named "uvicorn.error" that uvicorn's WebSocket protocol and the websockets
    library use for each connection (app/transport/ws_protocol.py hands them this one): the
    same filter and level, but the per-connection INFO lines the filter drops ("connection
    open", '... "WebSocket ..." [accepted]', two per accepted call) are not even made into
    records."""

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg not in _PER_CONNECTION_MESSAGES:
            super().info(msg, *args, **kwargs)


CONNECTION_LOG = _ConnectionLogger("uvicorn.error", logging.INFO)
CONNECTION_LOG.parent = logging.getLogger("uvicorn.error")  # its handlers: the root's
CONNECTION_LOG.filters[:] = [_uvicorn_line]


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters]"


def skip_unwritten_record_attributes() -> None:
    """Records are made without the attributes JsonFormatter never writes (it leaves out
    every standard one): the caller's source location, found by walking the stack for each
    record, and the thread and process names. The logging module's documented switches."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def configure_logging(level: str) -> None:
    """Send all logs, uvicorn's included, to stderr as JSON lines."""
    skip_unwritten_record_attributes()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    # One access line per WebSocket upgrade is noise next to our own session lines.
    logging.getLogger("uvicorn.access").setLevel(max(logging.WARNING, root.level))
    # At DEBUG the WebSocket library would log upgrade headers (signatures, API keys) and
    # every frame (audio): keep those loggers at INFO whatever the level.
    for name in ("uvicorn.error", "websockets"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.filters[:] = [_uvicorn_line]
    CONNECTION_LOG.setLevel(uvicorn_error.level)


def refusal_log(logger: logging.Logger) -> ThrottledLog:
    """The log of one kind of refused connection (connections are the client's to open): 20
    lines per cause at once, then one a second, each saying how many were left out. A
    sustained flood writes a line a second per cause."""
    return ThrottledLog(logger, per_second=1.0, burst=20.0)


class ThrottledLog:
    """Lines about connections a client can open at will (refusals, failed logins): at most
    `per_second` a second for each `key`, after a burst of `burst` (default: as many). A
    line that is let through says how many of its kind were left out before it; each
    left-out line is counted in `audiohook_log_lines_suppressed_total`."""

    def __init__(
        self, logger: logging.Logger, per_second: float = 20.0, burst: float | None = None
    ) -> None:
        self._logger = logger
        self._rate = per_second
        self._burst = per_second if burst is None else burst
        # key -> [tokens, last refill time, lines left out since the last one written]
        self._state: dict[str, list[float]] = {}

    def log(self, level: int, key: str, message: str, extra: dict[str, Any]) -> None:
        now = time.monotonic()
        state = self._state.get(key)
        if state is None:
            if len(self._state) >= _MAX_THROTTLE_KEYS:
                self._state.clear()  # keys are a small fixed set; this only bounds a mistake
            state = self._state[key] = [self._burst, now, 0.0]
        state[0] = min(self._burst, state[0] + (now - state[1]) * self._rate)
        state[1] = now
        if state[0] < 1.0:
            state[2] += 1
            LOG_LINES_SUPPRESSED.inc()
            return
        state[0] -= 1.0
        if state[2]:
            extra = {**extra, "similar_lines_suppressed": int(state[2])}
            state[2] = 0.0
        self._logger.log(level, message, extra=extra)
