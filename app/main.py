"""Application factory: ``create_app(settings)`` wires the gateway's services into FastAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Match, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from app import __version__
from app.config import Settings
from app.runtime import Gateway
from app.transport.host import EndpointHost
from app.transport.http import operational_routes
from app.transport.websocket import audiohook_endpoint


class GatewayApp(FastAPI):
    """FastAPI, less its middleware stack on the AudioHook upgrade.

    Each accepted call would otherwise pass through six middleware layers and the router
    (a dozen coroutine frames, each resumed again at every await of the call) that do nothing
    for this route: it has no body, dependencies or exception handlers, and an exception it
    raises reaches uvicorn the same way (logged, the upgrade answered 500 or the socket
    closed 1011). Everything else (lifespan, HTTP routes, other paths) is FastAPI's."""

    audiohook_route: WebSocketRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.audiohook_route
        if route is not None and scope["type"] == "websocket":
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["app"] = self  # as Starlette sets it: the endpoint reads app.state
                scope.update(child_scope)
                await audiohook_endpoint(WebSocket(scope, receive, send))
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = GatewayApp(
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
    app.audiohook_route = WebSocketRoute(settings.ws_path, audiohook_endpoint)
    app.router.routes.append(app.audiohook_route)
    if settings.metrics_port == 0:
        app.router.routes.extend(operational_routes(gateway))
    return app
