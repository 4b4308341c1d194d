"""Run the gateway: the AudioHook listener and the metrics listener in one event loop.

SIGTERM (or SIGINT) starts a graceful drain before uvicorn is told to stop: readiness goes
false and new upgrades are refused at once, live sessions get the grace period, then the
configured drain action, and the lifespan shutdown flushes the publisher. With no Redis URL
configured, a real Redis server is started on loopback for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Generator

import uvicorn

from app.config import Settings
from app.main import create_app
from app.observability.logging import configure_logging
from app.runtime import Gateway
from app.streams.embedded_redis import EmbeddedRedis
from app.transport.http import operational_app
from app.transport.http_guard import guarded_http_protocol
from app.transport.ws_protocol import AudioHookWebSocketProtocol

log = logging.getLogger("app.server")

# Large enough for a 65,535-character text message in any UTF-8; the protocol's own limits
# (text length, max_frame_bytes) are enforced by the session with a protocol answer.
WS_MAX_MESSAGE_BYTES = 4 * 65_535 + 1024

# Thousands of live sessions keep hundreds of thousands of objects alive. Objects created at
# start-up are frozen out of the cyclic collector, so its collections only walk what sessions
# create. The collection thresholds stay at Python's defaults: raising the young-generation
# threshold shortened the latency tail at 2,000 calls, but RSS then grew by ~14 KB per call
# in a 10-minute soak (300 recycled calls), while the defaults stayed flat.


def _tune_gc() -> None:
    gc.collect()
    gc.freeze()


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by ``serve`` (drain first, then stop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _uvicorn_config(
    app: object, host: str, port: int, settings: Settings, gateway: Gateway | None = None
) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        loop="none",
        # Every connection answered or closed in bounded time and memory (docs/http-guard.md);
        # refusals on the main listener count against the source's upgrade rate limit.
        http=guarded_http_protocol(
            settings.max_request_head_bytes, settings.open_timeout_seconds, gateway
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


async def serve(settings: Settings) -> int:
    embedded: EmbeddedRedis | None = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(data_dir=settings.redis_embedded_dir, appendonly=True)
        embedded.start()
        settings = settings.model_copy(update={"redis_url": embedded.url})
        log.info("embedded redis started", extra={"redis_url": embedded.url})
    try:
        app = create_app(settings)
        _tune_gc()
        main_server = _Server(
            _uvicorn_config(app, settings.host, settings.port, settings, app.state.gateway)
        )
        servers = [main_server]
        if settings.metrics_port:
            metrics_app = operational_app(app.state.gateway)
            servers.append(
                _Server(
                    _uvicorn_config(
                        metrics_app, settings.metrics_host, settings.metrics_port, settings
                    )
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
    configure_logging(settings.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(serve(settings))
    if sys.version_info >= (3, 12):  # pragma: no cover
        return asyncio.run(serve(settings), loop_factory=uvloop.new_event_loop)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings))
