"""Application factory: ``create_app(settings)`` wires the gateway's services into FastAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import WebSocketRoute

from app import __version__
from app.config import Settings
from app.runtime import Gateway
from app.transport.host import EndpointHost
from app.transport.http import operational_routes
from app.transport.websocket import audiohook_endpoint


def create_app(settings: Settings) -> FastAPI:
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title="AudioHook Gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # What the endpoint reads: the gateway as the transport sees it (mypy checks it fits).
    host: EndpointHost = gateway
    app.state.gateway = host
    # Starlette's plain route: FastAPI's would solve dependencies per upgrade and keep three
    # exit stacks per live session, for an endpoint that takes only the WebSocket.
    app.router.routes.append(WebSocketRoute(settings.ws_path, audiohook_endpoint))
    if settings.metrics_port == 0:
        app.router.routes.extend(operational_routes(gateway))
    return app
