"""Shared pieces of the resilience tests: a gateway process, its metrics, stored audio."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from app.streams import keys
from app.streams.embedded_redis import EmbeddedRedis
from tests.integration.resilience.wire import Refused, WireClient
from tests.support.gateway_process import TEST_API_KEY, TEST_CLIENT_SECRET, GatewayProcess

LIMITED_KEY = "limited-key"
LIMITED_SECRET = base64.b64encode(b"limited-integration-secret-32byt").decode()
INTEGRATIONS: list[dict[str, object]] = [
    {"name": "test", "api_key": TEST_API_KEY, "client_secrets": [TEST_CLIENT_SECRET]},
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

REJECTED = "audiohook_connections_rejected_total"
PROTOCOL_ERRORS = "audiohook_protocol_errors_total"
DISCONNECTS = "audiohook_disconnects_sent_total"
SESSIONS_ACTIVE = "audiohook_sessions_active"


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


def metric(gateway: GatewayProcess, sample: str, **labels: str) -> float:
    """Sum of the gateway's samples named `sample` whose labels include `labels`."""
    text = httpx.get(f"{gateway.metrics_url}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == sample and all(item.labels.get(k) == v for k, v in labels.items()):
                total += item.value
    return total


async def wait_for_metric(
    gateway: GatewayProcess, sample: str, value: float, timeout: float = 5.0, **labels: str
) -> None:
    """Poll until the sample reaches `value` (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while (current := metric(gateway, sample, **labels)) != value:
        assert time.monotonic() < deadline, f"{sample}{labels} is {current}, expected {value}"
        await asyncio.sleep(0.05)


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


@dataclass(frozen=True, slots=True)
class StoredSession:
    frames: list[tuple[int, bytes]]  # (sample offset, audio) of every audio entry
    events: list[str]
    closed: dict[bytes, bytes]


async def stored_session(
    client: redis.asyncio.Redis, session_id: str, timeout: float = 5.0
) -> StoredSession:
    """A session's stream once its `closed` entry (always the last one) is in Redis."""
    key = keys.audio_stream(session_id)
    deadline = time.monotonic() + timeout
    while True:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(key))
        if entries and entries[-1][1].get(b"type") == b"closed":
            break
        assert time.monotonic() < deadline, f"no closed entry in {key}"
        await asyncio.sleep(0.05)
    frames = [
        (int(fields[b"offset"]), fields[b"audio"]) for _, fields in entries if b"audio" in fields
    ]
    events = [fields[b"type"].decode() for _, fields in entries if b"audio" not in fields]
    return StoredSession(frames, events, entries[-1][1])
