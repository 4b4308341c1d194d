"""Operational HTTP routes: liveness, readiness and Prometheus metrics.

Served on their own port by default so an ingress that exposes the AudioHook listener never
exposes metrics; with ``metrics_port = 0`` they are added to the main app instead.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.transport.host import ReadinessHost


def operational_routes(gateway: ReadinessHost) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> Response:
        checks = gateway.readiness()
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    async def metrics_endpoint(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
    ]


def operational_app(gateway: ReadinessHost) -> Starlette:
    return Starlette(routes=operational_routes(gateway))
