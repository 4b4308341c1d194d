"""Run the gateway: the AudioHook listener and the metrics listener in one event loop.

SIGTERM (or SIGINT) starts a graceful drain before uvicorn is told to stop: readiness goes
false and new upgrades are refused at once, live sessions get the grace period, then the
configured drain action, and the lifespan shutdown flushes the publisher. With no Redis URL
configured, a real Redis server is started on loopback for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
import sys
from collections.abc import Generator

import uvicorn

from app.config import Settings
from app.main import create_app
from app.observability.logging import LISTENER, configure_logging
from app.open_files import raise_open_file_limit, unfinished_requests_bound
from app.preflight import EXIT_START
from app.redis.embedded import EmbeddedRedis, EmbeddedRedisError
from app.runtime import Gateway
from app.transport.http import operational_app
from app.transport.http_guard import guarded_http_protocol
from app.transport.source_limiter import SourceConnectionLimit
from app.transport.ws_protocol import AudioHookWebSocketProtocol

log = logging.getLogger("app.server")

# Large enough for a 65,535-character text message in any UTF-8; the protocol's own limits
# (text length, max_frame_bytes) are enforced by the session with a protocol answer.
WS_MAX_MESSAGE_BYTES = 4 * 65_535 + 1024
LISTEN_BACKLOG = 2048  # uvicorn's default

# Thousands of live sessions keep hundreds of thousands of objects alive, and a full pass of
# the cyclic collector walks all of them: 100-200 ms at 1,000-2,000 calls, a stall for every
# live call. Objects created at start-up are frozen out of it; an ended session is freed by
# reference counting (no cycles: tests/integration/gateway/test_session_memory.py), so full
# passes are only needed for the rare cycle elsewhere and run at most every 100 middle-
# generation passes (Python's default: 10): about every two minutes at 1,000 calls, not 15 s.
GC_THRESHOLDS = (700, 10, 100)


def _tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by ``serve`` (drain first, then stop), on a
    socket bound before anything started; its log lines name the listener."""

    def __init__(self, config: uvicorn.Config, listener: str, sock: socket.socket) -> None:
        super().__init__(config)
        self.listener = listener
        self.socket = sock

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        LISTENER.set(self.listener)  # this task's context: uvicorn's lines get the field
        host, port = self.socket.getsockname()[:2]
        log.info("listening", extra={"listener": self.listener, "address": f"{host}:{port}"})
        await super().serve(sockets or [self.socket])


class ListenError(Exception):
    """A listener's address cannot be bound; the message is one line naming the setting."""


def bind_listener(variable: str, host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening, as uvicorn would bind it. Listening from
    here on, a connection that arrives while the gateway starts (readiness can be answered
    by the metrics listener a moment before the main one serves) waits in the backlog
    instead of being refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        address = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why = "address already in use (another gateway or program listens there)"
        raise ListenError(f"{variable}={port}: cannot listen on {address}: {why}") from None
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def bind_listeners(settings: Settings) -> dict[str, socket.socket]:
    """The main listener's socket and, unless it is 0, the metrics listener's."""
    sockets = {"audiohook": bind_listener("AUDIOHOOK_PORT", settings.host, settings.port)}
    if settings.metrics_port:
        try:
            sockets["metrics"] = bind_listener(
                "AUDIOHOOK_METRICS_PORT", settings.metrics_host, settings.metrics_port
            )
        except ListenError:
            sockets["audiohook"].close()
            raise
    return sockets


def uvicorn_config(
    app: object, host: str, port: int, settings: Settings, gateway: Gateway | None = None
) -> uvicorn.Config:
    """How uvicorn runs a listener of the gateway (`gateway`: the main one's)."""
    per_source = settings.max_unfinished_requests_per_source
    # The main listener's clients are the internet's: a total bound too.
    unfinished_total = (
        unfinished_requests_bound(settings.max_sessions, per_source) if gateway is not None else 0
    )
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        loop="none",
        # Every connection answered or closed in bounded time and memory (docs/http-guard.md);
        # refusals on the main listener count against the source's upgrade rate limit.
        http=guarded_http_protocol(
            settings.max_request_head_bytes,
            settings.open_timeout_seconds,
            SourceConnectionLimit(per_source, settings.source_ipv6_prefix_length, unfinished_total),
            gateway,
        ),
        ws=AudioHookWebSocketProtocol,
        # Never below max_frame_bytes, so the session's own limit answers oversized frames.
        ws_max_size=max(WS_MAX_MESSAGE_BYTES, settings.max_frame_bytes + 1),
        ws_per_message_deflate=False,
        proxy_headers=False,  # the IP allowlist reads X-Forwarded-For from trusted proxies itself
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.drain_close_wait_seconds) + 1,
    )


async def serve(settings: Settings, sockets: dict[str, socket.socket] | None = None) -> int:
    if sockets is None:
        sockets = bind_listeners(settings)
    embedded: EmbeddedRedis | None = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(data_dir=settings.redis_embedded_dir, appendonly=True)
        try:
            embedded.start()  # logs its own line, with the URL
        except (EmbeddedRedisError, OSError) as exc:
            log.error("embedded redis did not start: %s", " ".join(str(exc).split()))
            return EXIT_START
        settings = settings.model_copy(update={"redis_url": embedded.url})
    try:
        app = create_app(settings)
        _tune_gc()
        main_server = _Server(
            uvicorn_config(app, settings.host, settings.port, settings, app.state.gateway),
            "audiohook",
            sockets["audiohook"],
        )
        servers = [main_server]
        if "metrics" in sockets:
            metrics_app = operational_app(app.state.gateway)
            servers.append(
                _Server(
                    uvicorn_config(
                        metrics_app, settings.metrics_host, settings.metrics_port, settings
                    ),
                    "metrics",
                    sockets["metrics"],
                )
            )
            servers[-1].config.lifespan = "off"

        tasks = [asyncio.create_task(server.serve()) for server in servers]

        async def shut_down() -> None:
            try:
                await app.state.gateway.drain()
            except Exception:  # stop anyway: a failed drain must not leave the process up
                log.exception("drain failed")
            finally:
                main_server.should_exit = True
                await asyncio.wait([tasks[0]])  # metrics stay up until the main listener is gone
                for server in servers:
                    server.should_exit = True

        loop = asyncio.get_running_loop()
        shutdown_started: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            if not shutdown_started:
                log.info("shutdown signal received")
                shutdown_started.append(loop.create_task(shut_down()))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await asyncio.gather(*tasks)
        return 0
    finally:
        if embedded is not None:
            embedded.stop(keep_data=True)


def run(settings: Settings) -> int:
    # Both addresses are bound before anything starts (the embedded Redis included): a port
    # in use is one line and exit code 1, whichever listener it is.
    try:
        sockets = bind_listeners(settings)
    except ListenError as exc:
        print(f"audiohook-gateway serve: {exc}", file=sys.stderr)
        return EXIT_START
    configure_logging(settings.log_level)
    raise_open_file_limit(settings.max_sessions)  # before the embedded Redis inherits it
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(serve(settings, sockets))
    if sys.version_info >= (3, 12):  # pragma: no cover
        return asyncio.run(serve(settings, sockets), loop_factory=uvloop.new_event_loop)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings, sockets))
