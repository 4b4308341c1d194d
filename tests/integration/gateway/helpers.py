"""Shared pieces of the gateway integration tests: test integrations, gateway processes,
metrics, log records, Redis stream reads and a well-behaved call that streams in the
background while a test misbehaves on another connection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from app.streams import keys
from app.streams.embedded_redis import EmbeddedRedis
from tests.support.gateway_process import (
    TEST_API_KEY,
    TEST_CLIENT_SECRET,
    GatewayProcess,
)
from tests.support.raw_client import RawClient

AUTH_MIN_FAILURE_DELAY = 0.3
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def secret(seed: str) -> str:
    """A base64 32-byte client secret derived from `seed`."""
    return base64.b64encode(seed.encode().ljust(32, b"#")[:32]).decode()


ROTATING_KEY = "rotating-key"
ROTATING_OLD_SECRET = secret("rotating-old")
ROTATING_NEW_SECRET = secret("rotating-new")
UNSIGNED_KEY = "unsigned-key"
RESTRICTED_KEY = "restricted-key"
RESTRICTED_SECRET = secret("restricted")
RESTRICTED_ORG = "5b1c6a0e-2f4d-4c8e-9b7a-1d2e3f4a5b6c"
DISABLED_KEY = "disabled-key"
DISABLED_SECRET = secret("disabled")

INTEGRATIONS: list[dict[str, object]] = [
    {"name": "test", "api_key": TEST_API_KEY, "client_secrets": [TEST_CLIENT_SECRET]},
    {
        "name": "rotating",
        "api_key": ROTATING_KEY,
        "client_secrets": [ROTATING_OLD_SECRET, ROTATING_NEW_SECRET],
    },
    {"name": "unsigned", "api_key": UNSIGNED_KEY, "client_secrets": []},
    {
        "name": "restricted",
        "api_key": RESTRICTED_KEY,
        "client_secrets": [RESTRICTED_SECRET],
        "allowed_organizations": [RESTRICTED_ORG],
    },
    {
        "name": "disabled",
        "api_key": DISABLED_KEY,
        "client_secrets": [DISABLED_SECRET],
        "enabled": False,
    },
]

# Every test connects from 127.0.0.1: lift the per-source upgrade rate limit out of the way.
BASE_SETTINGS = {
    "AUTH_MIN_FAILURE_DELAY_SECONDS": str(AUTH_MIN_FAILURE_DELAY),
    "UPGRADES_PER_SECOND_PER_SOURCE": "100000",
    "UPGRADE_BURST_PER_SOURCE": "100000",
}


@contextlib.contextmanager
def running_gateway(
    redis_server: EmbeddedRedis,
    log_dir: Path,
    settings: Mapping[str, str] | None = None,
    integrations: list[dict[str, object]] | None = None,
) -> Iterator[GatewayProcess]:
    """A gateway child process on loopback ports, stopped on exit."""
    if not redis_server.running:  # another test may have stopped the shared server
        redis_server.start()
    process = GatewayProcess(
        redis_server.url,
        log_dir / "gateway.log",
        settings={**BASE_SETTINGS, **(settings or {})},
        integrations=integrations or INTEGRATIONS,
    )
    with process:
        yield process


# --- metrics and logs ----------------------------------------------------------------------


def metric_value(gateway: GatewayProcess, sample: str, **labels: str) -> float:
    """Sum of the samples named `sample` whose labels include `labels` (0 when absent)."""
    text = httpx.get(f"{gateway.metrics_url}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == sample and all(item.labels.get(k) == v for k, v in labels.items()):
                total += item.value
    return total


class MetricDelta:
    """Reads a counter before and after: `delta()` is how much it grew."""

    def __init__(self, gateway: GatewayProcess, sample: str, **labels: str) -> None:
        self.gateway, self.sample, self.labels = gateway, sample, labels
        self.before = metric_value(gateway, sample, **labels)

    def delta(self) -> float:
        return metric_value(self.gateway, self.sample, **self.labels) - self.before


REJECTED = "audiohook_connections_rejected_total"
PROTOCOL_ERRORS = "audiohook_protocol_errors_total"


async def wait_for_log(
    gateway: GatewayProcess,
    match: Callable[[dict[str, object]], bool],
    timeout: float = 3.0,
) -> dict[str, object]:
    """The first log record of the gateway for which `match` is true (polls the log file)."""
    deadline = time.monotonic() + timeout
    while True:
        for record in gateway.log_records():
            if match(record):
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching log record; tail:\n{gateway.log_tail()}")
        await asyncio.sleep(0.05)


def session_log_text(gateway: GatewayProcess, session_id: str) -> str:
    """Every log line mentioning `session_id`, joined (to search for leaked values)."""
    lines = gateway.log_path.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if session_id in line)


# --- Redis streams -------------------------------------------------------------------------


@dataclass
class SessionStream:
    audio: list[dict[bytes, bytes]] = field(default_factory=list)
    events: list[dict[bytes, bytes]] = field(default_factory=list)

    @property
    def frames(self) -> list[bytes]:
        return [entry[b"audio"] for entry in self.audio]

    @property
    def offsets(self) -> list[int]:
        return [int(entry[b"offset"]) for entry in self.audio]

    @property
    def event_types(self) -> list[str]:
        return [entry[b"type"].decode() for entry in self.events]

    def event_data(self, event_type: str) -> dict[str, Any]:
        entry = next(e for e in self.events if e[b"type"] == event_type.encode())
        data = json.loads(entry[b"data"])
        assert isinstance(data, dict)
        return data


async def read_closed_session(
    client: redis.asyncio.Redis, session_id: str, timeout: float = 5.0
) -> SessionStream:
    """A session's stream once its `closed` event is in it (audio and events split)."""
    key = keys.audio_stream(session_id)
    deadline = time.monotonic() + timeout
    while True:
        entries = cast(StreamEntries, await client.xrange(key))
        if entries and entries[-1][1].get(b"type") == b"closed":
            stream = SessionStream()
            for _, fields in entries:
                (stream.audio if b"audio" in fields else stream.events).append(fields)
            return stream
        if time.monotonic() > deadline:
            raise AssertionError(f"no closed entry in {key} after {timeout} s: {entries[-3:]}")
        await asyncio.sleep(0.05)


async def events_of(client: redis.asyncio.Redis, session_id: str) -> list[dict[bytes, bytes]]:
    """Entries of the lifecycle events stream that belong to `session_id`."""
    entries = cast(StreamEntries, await client.xrange(keys.EVENTS_STREAM))
    return [fields for _, fields in entries if fields.get(b"session_id") == session_id.encode()]


# --- a good call running alongside a bad one --------------------------------------------------

FRAME_BYTES = 1600  # 100 ms of stereo PCMU


class BackgroundCall:
    """A well-behaved stereo PCMU call streaming 100 ms frames every `interval` seconds.

    `start()` opens it; `finish()` stops streaming, closes (expects `closed`) and checks that
    every frame sent is in Redis, in order, with the right offsets."""

    def __init__(self, uri: str, interval: float = 0.02, seed: int = 7) -> None:
        self.uri = uri
        self.interval = interval
        self.random = random.Random(seed)
        self.sent: list[bytes] = []
        self.client: RawClient | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, min_frames: int = 3) -> BackgroundCall:
        self.client = await RawClient.connect(self.uri)
        await self.client.open()
        assert self.client.media is not None
        assert self.client.media.channels == ("external", "internal")
        self._task = asyncio.create_task(self._stream())
        await self.wait_frames(min_frames)
        return self

    async def _stream(self) -> None:
        assert self.client is not None
        while not self._stop.is_set():
            frame = self.random.randbytes(FRAME_BYTES)
            await self.client.send_audio(frame)
            self.sent.append(frame)
            await asyncio.sleep(self.interval)

    async def wait_frames(self, count: int, timeout: float = 5.0) -> None:
        """Until `count` more frames have been sent."""
        target = len(self.sent) + count
        deadline = time.monotonic() + timeout
        while len(self.sent) < target:
            assert self._task is not None
            assert not self._task.done(), "the call stopped streaming"
            assert time.monotonic() < deadline, "the background call stalled"
            await asyncio.sleep(0.01)

    async def finish(self, redis_client: redis.asyncio.Redis) -> SessionStream:
        assert self.client is not None
        assert self._task is not None
        await self.wait_frames(3)  # it kept streaming after the other session's trouble
        self._stop.set()
        await self._task
        try:
            await self.client.close()
            self.client.assert_conformant()
        finally:
            await self.client.aclose()
        stream = await read_closed_session(redis_client, self.client.session_id)
        assert stream.frames == self.sent
        assert stream.offsets == [i * FRAME_BYTES // 2 for i in range(len(self.sent))]
        assert stream.event_data("closed")["reason"] == "end"
        return stream

    async def abort(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        if self.client is not None:
            await self.client.aclose()


@contextlib.asynccontextmanager
async def alongside_good_call(
    uri: str, redis_client: redis.asyncio.Redis, interval: float = 0.02
) -> Any:
    """Run the body while a good call streams on the same gateway; verify the call after."""
    call = BackgroundCall(uri, interval)
    await call.start()
    try:
        yield call
    except BaseException:
        await call.abort()
        raise
    await call.finish(redis_client)
