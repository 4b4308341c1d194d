"""Graceful drain of the real gateway process on SIGTERM (issue 8, "Must show").

Each test runs `audiohook-gateway serve` as a child process with live real-time sessions,
sends SIGTERM and checks: /readyz answers 503, a new upgrade is refused with HTTP 503, a
session that ends by itself within the grace period is left alone, the others get the
configured drain action, every frame the sessions sent is in Redis, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path

import redis.asyncio

from app.client import ClientSession, SessionConfig, SessionResult, tone_source
from app.redis.embedded import EmbeddedRedis
from tests.integration.resilience.helpers import gateway_process, readyz, refused
from tests.integration.resilience.wire import WireClient
from tests.support.gateway_process import TEST_API_KEY, TEST_CLIENT_SECRET, GatewayProcess
from tests.support.metrics import REJECTED, metric_value
from tests.support.redis_servers import redis_stalled
from tests.support.session_streams import SessionStream, closed_session_stream

FRAME_BYTES = 3200  # 200 ms of stereo PCMU
HANG_GUARD = 20.0


def drain_settings(action: str, grace: float, close_wait: float) -> dict[str, str]:
    return {
        "DRAIN_ACTION": action,
        "DRAIN_GRACE_SECONDS": str(grace),
        "DRAIN_CLOSE_WAIT_SECONDS": str(close_wait),
    }


def call(uri: str, seconds: float) -> ClientSession:
    """A Genesys-like real-time stereo PCMU call of `seconds` of audio."""
    config = SessionConfig(
        uri=uri,
        api_key=TEST_API_KEY,
        client_secret=TEST_CLIENT_SECRET,
        source=tone_source(seconds),
        close_timeout=5.0,
    )
    return ClientSession(config)


async def wait_streaming(sessions: list[ClientSession], frames: int = 2) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not all(s.result.opened and s.result.frames_sent >= frames for s in sessions):
        assert time.monotonic() < deadline, [s.result.to_dict() for s in sessions]
        await asyncio.sleep(0.05)


async def sigterm_and_check_refusals(gateway: GatewayProcess) -> float:
    """SIGTERM; then readiness must go false and a new upgrade get HTTP 503."""
    refused_before = metric_value(gateway, REJECTED, cause="draining")
    gateway.terminate()
    signalled_at = time.monotonic()
    while readyz(gateway) != 503:
        assert time.monotonic() - signalled_at < HANG_GUARD, "readiness never went false"
        await asyncio.sleep(0.02)
    late = await call(gateway.ws_url, 1.0).run()
    assert late.http_status == 503, late.to_dict()
    assert not late.opened
    assert metric_value(gateway, REJECTED, cause="draining") == refused_before + 1
    return signalled_at


def assert_all_frames_stored(result: SessionResult, stored: SessionStream) -> None:
    sent = [(frame.offset, frame.data) for frame in result.frames]
    assert len(sent) == result.frames_sent > 0
    assert stored.offsets_and_audio == sent, (
        f"{len(stored.offsets_and_audio)} frames stored, {len(sent)} sent"
    )


async def test_drain_disconnect_completed(
    redis_server: EmbeddedRedis, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    grace, close_wait = 2.5, 3.0
    settings = drain_settings("disconnect", grace, close_wait)
    with gateway_process(redis_server, tmp_path, settings) as gateway:
        long_calls = [call(gateway.ws_url, 60.0) for _ in range(3)]
        runs = [asyncio.create_task(s.run()) for s in long_calls]
        await wait_streaming(long_calls)
        short_call = call(gateway.ws_url, 1.0)  # ends by itself well inside the grace period
        short_run = asyncio.create_task(short_call.run())
        await wait_streaming([short_call], frames=1)

        signalled_at = await sigterm_and_check_refusals(gateway)
        short = await asyncio.wait_for(short_run, HANG_GUARD)
        results = await asyncio.wait_for(asyncio.gather(*runs), HANG_GUARD)
        exit_code = gateway.wait(timeout=grace + close_wait + HANG_GUARD)
        stopped_after = time.monotonic() - signalled_at

    assert exit_code == 0, gateway.log_tail()
    assert stopped_after >= grace  # live calls were given the whole grace period

    # The short call was not cut: it streamed its whole second and closed normally.
    assert short.ok, short.to_dict()
    assert short.disconnect is None
    assert short.reconnects == []
    assert short.close_reason == "end"
    assert short.frames_sent == 5
    stored = await closed_session_stream(redis_client, short.session_id)
    assert_all_frames_stored(short, stored)
    assert b'"reason":"end"' in stored.closed[b"data"]

    for result in results:
        assert result.disconnect is not None, result.to_dict()
        assert result.disconnect["reason"] == "completed"
        assert result.close_reason == "disconnect"  # the client answered with close
        assert result.closed, result.to_dict()  # ... and got its closed
        assert not result.errors, [f.text for f in result.errors]
        assert result.frames_sent >= grace / 0.2 - 1  # it streamed through the grace period
        stored = await closed_session_stream(redis_client, result.session_id)
        assert_all_frames_stored(result, stored)
        assert b'"reason":"disconnect"' in stored.closed[b"data"]
        assert b'"frames_lost":0' in stored.closed[b"data"]


class ReconnectingCall:
    """A call that honours `reconnect` as a Genesys client would: it stops streaming and
    closes this session with reason `reconnect` (taking the call elsewhere)."""

    def __init__(self, client: WireClient, seed: int) -> None:
        self.client = client
        self.random = random.Random(seed)
        self.sent: list[tuple[int, bytes]] = []
        self.reconnect_info: str | None = None
        self.closed: dict[str, object] | None = None
        self._stop = asyncio.Event()
        self._streaming = asyncio.create_task(self._stream())
        self.done = asyncio.create_task(self._listen())

    async def _stream(self) -> None:
        while not self._stop.is_set():
            frame = self.random.randbytes(FRAME_BYTES)
            offset = self.client.counters.position
            await self.client.send_audio(frame)
            self.sent.append((offset, frame))
            await asyncio.sleep(0.05)

    async def _listen(self) -> None:
        message = await self.client.expect("reconnect", timeout=HANG_GUARD)
        self.reconnect_info = message["parameters"].get("info")
        self._stop.set()
        await self._streaming
        self.closed = await self.client.close("reconnect")


async def test_drain_reconnect(
    redis_server: EmbeddedRedis, redis_client: redis.asyncio.Redis, tmp_path: Path
) -> None:
    grace, close_wait = 1.0, 2.0
    settings = drain_settings("reconnect", grace, close_wait)
    with gateway_process(redis_server, tmp_path, settings) as gateway:
        honouring: list[ReconnectingCall] = []
        for seed in range(2):
            client = await WireClient.connect(gateway.ws_url)
            await client.open()
            honouring.append(ReconnectingCall(client, seed))
        # The project's client only records `reconnect` and streams on (docs/protocol.md §7: the
        # reference client just logs it), so after the close wait the gateway follows up with
        # `disconnect` completed, which it honours.
        ignoring = call(gateway.ws_url, 60.0)
        ignoring_run = asyncio.create_task(ignoring.run())
        await wait_streaming([ignoring])

        signalled_at = await sigterm_and_check_refusals(gateway)
        try:
            assert (await refused(gateway.ws_url)).status == 503  # a bare upgrade, too
            for honoured in honouring:
                await asyncio.wait_for(honoured.done, HANG_GUARD)
            ignored = await asyncio.wait_for(ignoring_run, HANG_GUARD)
            exit_code = gateway.wait(timeout=grace + 2 * close_wait + HANG_GUARD)
            stopped_after = time.monotonic() - signalled_at
        finally:
            for honoured in honouring:
                await honoured.client.aclose()

    assert exit_code == 0, gateway.log_tail()
    assert stopped_after >= grace

    for honoured in honouring:
        assert honoured.reconnect_info == "server shutting down"
        assert honoured.closed is not None
        stored = await closed_session_stream(redis_client, honoured.client.session_id)
        assert stored.offsets_and_audio == honoured.sent
        assert b'"reason":"reconnect"' in stored.closed[b"data"]

    assert ignored.reconnects == ["server shutting down"], ignored.to_dict()
    assert ignored.disconnect == {"reason": "completed", "info": "server shutting down"}
    assert ignored.ok, ignored.to_dict()
    assert ignored.close_reason == "disconnect"
    # It closed cleanly, so every frame it sent is stored, in order.
    stored = await closed_session_stream(redis_client, ignored.session_id)
    assert stored.offsets_and_audio == [(frame.offset, frame.data) for frame in ignored.frames]
    assert b'"frames_lost":0' in stored.closed[b"data"]
    assert b'"reason":"disconnect"' in stored.closed[b"data"]


async def test_exit_with_redis_frozen_is_bounded_and_counts_what_it_could_not_write(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """SIGTERM while Redis is frozen and the calls ignore `disconnect`: the process still
    exits 0 within its bound, and each call's unwritten audio is one error line that counts
    it, not a traceback."""
    grace, close_wait = 1.0, 1.0
    settings = drain_settings("disconnect", grace, close_wait)
    with gateway_process(redis_server, tmp_path, settings) as gateway:
        clients = [await WireClient.connect(gateway.ws_url) for _ in range(3)]
        for client in clients:
            await client.open()

        async def stream_until_cut(client: WireClient) -> None:
            with contextlib.suppress(OSError):
                while True:
                    await client.send_audio(bytes(FRAME_BYTES))
                    await asyncio.sleep(0.2)

        streams = [asyncio.create_task(stream_until_cut(client)) for client in clients]
        try:
            await asyncio.sleep(0.5)
            with redis_stalled(redis_server):
                await asyncio.sleep(0.5)  # audio now waits for Redis
                gateway.terminate()
                exit_code = await asyncio.to_thread(
                    gateway.wait, grace + 2 * close_wait + HANG_GUARD
                )
        finally:
            for task in streams:
                task.cancel()
            for client in clients:
                await client.aclose()
        records = gateway.log_records()

    assert exit_code == 0, gateway.log_tail()
    assert [r for r in records if "exception" in r] == []
    errors = [r for r in records if r["level"] == "ERROR"]
    assert {r["message"] for r in errors} == {"publisher stopped with unwritten audio"}
    sessions = {client.session_id for client in clients}
    assert sorted(str(r["session_id"]) for r in errors) == sorted(sessions)  # one line each
    assert all(int(str(r["frames_lost"])) > 0 for r in errors)
