"""Shared pieces of the resilience tests: a gateway process, readiness, refused upgrades."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from app.redis.embedded import EmbeddedRedis
from tests.integration.resilience.wire import Refused, WireClient
from tests.support.gateway_process import TEST_INTEGRATION, GatewayProcess

LIMITED_KEY = "limited-key"
LIMITED_SECRET = base64.b64encode(b"limited-integration-secret-32byt").decode()
INTEGRATIONS: list[dict[str, object]] = [
    TEST_INTEGRATION,
    {
        "name": "limited",
        "api_key": LIMITED_KEY,
        "client_secrets": [LIMITED_SECRET],
        "max_concurrent_sessions": 2,
    },
]
# Short waits, and per-source limits out of the way unless a test sets them.
BASE_SETTINGS = {
    "AUTH_MIN_FAILURE_DELAY_SECONDS": "0.1",
    "UPGRADES_PER_SECOND_PER_SOURCE": "100000",
    "UPGRADE_BURST_PER_SOURCE": "100000",
    "DRAIN_GRACE_SECONDS": "1",
    "DRAIN_CLOSE_WAIT_SECONDS": "2",
}


@contextlib.contextmanager
def gateway_process(
    redis_server: EmbeddedRedis, log_dir: Path, settings: Mapping[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """The real gateway (`audiohook-gateway serve`) as a child process on loopback."""
    if not redis_server.running:
        redis_server.start()
    process = GatewayProcess(
        redis_server.url,
        log_dir / "gateway.log",
        settings={**BASE_SETTINGS, **(settings or {})},
        integrations=INTEGRATIONS,
    )
    with process:
        yield process


def readyz(gateway: GatewayProcess) -> int:
    return httpx.get(f"{gateway.metrics_url}/readyz", timeout=2).status_code


async def refused(uri: str, **kwargs: Any) -> Refused:
    """The HTTP refusal of an upgrade; AssertionError if it is accepted."""
    try:
        client = await WireClient.connect(uri, **kwargs)
    except Refused as answer:
        return answer
    await client.aclose()
    raise AssertionError("the upgrade was accepted")


async def good_call(gateway: GatewayProcess, source: str = "127.0.0.1") -> None:
    """A short call from `source`: open, one frame of audio, close."""
    client = await WireClient.connect(gateway.ws_url, source=source)
    try:
        await client.open()
        await client.send_audio(b"\xff" * 3200)
        await client.close()
    finally:
        await client.aclose()
