"""Shared pieces of the gateway integration tests: test integrations, gateway processes,
log records, lifecycle events and a well-behaved call that streams in the
background while a test misbehaves on another connection."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import redis.asyncio
import uvicorn

from app.config import Settings
from app.main import create_app
from app.redis import keys
from app.redis.embedded import EmbeddedRedis
from app.runtime import Gateway
from app.server import uvicorn_config
from tests.support.gateway_process import TEST_INTEGRATION, GatewayProcess
from tests.support.gateway_process import running_gateway as support_gateway
from tests.support.raw_client import RawClient
from tests.support.session_streams import SessionStream, closed_session_stream
from tests.support.streams import StreamEntries

AUTH_MIN_FAILURE_DELAY = 0.3


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
    TEST_INTEGRATION,
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


def in_process_settings(redis_url: str) -> Settings:
    """Settings for a gateway run inside the test's own process: this suite's base settings,
    the test integration, no metrics listener and no IP allowlist (tests connect from
    loopback)."""
    return Settings(
        redis_url=redis_url,
        integrations=json.dumps([TEST_INTEGRATION]),
        metrics_port=0,
        ip_allowlist_enabled=False,
        **{name.lower(): value for name, value in BASE_SETTINGS.items()},
    )


@contextlib.contextmanager
def running_gateway(
    redis_server: EmbeddedRedis,
    log_dir: Path,
    settings: Mapping[str, str] | None = None,
    integrations: list[dict[str, object]] | None = None,
) -> Iterator[GatewayProcess]:
    """A gateway child process on loopback ports, stopped on exit (`gateway.log` in
    `log_dir`; this suite's base settings and integrations)."""
    if not redis_server.running:  # another test may have stopped the shared server
        redis_server.start()
    with support_gateway(
        redis_server.url,
        log_dir / "gateway.log",
        settings,
        integrations or INTEGRATIONS,
        base_settings=BASE_SETTINGS,
    ) as process:
        yield process


# --- logs --------------------------------------------------------------------------------


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


# --- Redis lifecycle events ---------------------------------------------------------------


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
        stream = await closed_session_stream(redis_client, self.client.session_id)
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


@contextlib.asynccontextmanager
async def gateway_in_this_process(
    redis_url: str, prepare: Callable[[Gateway], None] | None = None
) -> AsyncIterator[tuple[Gateway, str]]:
    """A gateway served by real uvicorn on 127.0.0.1 in the test's own process, for tests
    that look at its objects: the gateway and its WebSocket URI. `prepare` sees the gateway
    before it starts."""
    settings = in_process_settings(redis_url)
    app = create_app(settings)
    if prepare is not None:
        prepare(app.state.gateway)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn_config(app, "127.0.0.1", port, settings, app.state.gateway)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield app.state.gateway, f"ws://127.0.0.1:{port}{settings.ws_path}"
    finally:
        server.should_exit = True
        await task
