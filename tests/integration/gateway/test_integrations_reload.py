"""Integrations from a mounted file are reloaded without a restart and without dropping the
sessions that started under the old content."""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path

import pytest
import redis.asyncio

from app.redis.embedded import EmbeddedRedis
from tests.integration.gateway.helpers import running_gateway, secret
from tests.support.gateway_process import GatewayProcess
from tests.support.raw_client import RawClient
from tests.support.session_streams import closed_session_stream

KEY_1, SECRET_1 = "file-key-1", secret("file-one")
KEY_2, SECRET_2 = "file-key-2", secret("file-two")
ONE: dict[str, object] = {"name": "file-one", "api_key": KEY_1, "client_secrets": [SECRET_1]}
TWO: dict[str, object] = {"name": "file-two", "api_key": KEY_2, "client_secrets": [SECRET_2]}


def _write(path: Path, integrations: list[dict[str, object]]) -> None:
    """Replace the file in one step, as a Kubernetes Secret update does."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(integrations))
    os.replace(scratch, path)


def _reloads(gateway: GatewayProcess) -> int:
    return sum(r.get("message") == "integrations reloaded" for r in gateway.log_records())


async def _wait_for_reloads(gateway: GatewayProcess, count: int, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while _reloads(gateway) < count:
            await asyncio.sleep(0.05)


async def _rejected(gateway: GatewayProcess, api_key: str, client_secret: str) -> None:
    async with await RawClient.connect(
        gateway.ws_url, api_key=api_key, client_secret=client_secret
    ) as client:
        await client.send_open()
        await client.expect_disconnect("unauthorized")
        await client.close("disconnect")


async def _accepted(gateway: GatewayProcess, api_key: str, client_secret: str) -> None:
    async with await RawClient.connect(
        gateway.ws_url, api_key=api_key, client_secret=client_secret
    ) as client:
        await client.open()
        await client.close()


async def test_file_reload_adds_and_removes_keys_while_a_live_session_continues(
    redis_server: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
    gateway_redis: redis.asyncio.Redis,
) -> None:
    directory = tmp_path_factory.mktemp("reload")
    file = directory / "integrations.json"
    _write(file, [ONE])
    settings = {"INTEGRATIONS_FILE": str(file), "INTEGRATIONS_RELOAD_SECONDS": "0.1"}
    with running_gateway(redis_server, directory, settings) as gateway:
        rng = random.Random(3)
        sent: list[bytes] = []
        live = await RawClient.connect(gateway.ws_url, api_key=KEY_1, client_secret=SECRET_1)
        try:
            await live.open()

            async def stream(frames: int) -> None:
                for _ in range(frames):
                    frame = rng.randbytes(3200)
                    await live.send_audio(frame)
                    sent.append(frame)

            await stream(3)
            await _rejected(gateway, KEY_2, SECRET_2)

            _write(file, [ONE, TWO])  # add a key
            await _wait_for_reloads(gateway, 1)
            await _accepted(gateway, KEY_2, SECRET_2)
            await _accepted(gateway, KEY_1, SECRET_1)
            await stream(3)
            await live.send("ping")
            await live.expect("pong")

            _write(file, [TWO])  # remove the live session's key
            await _wait_for_reloads(gateway, 2)
            await _rejected(gateway, KEY_1, SECRET_1)
            await _accepted(gateway, KEY_2, SECRET_2)
            await stream(3)
            await live.close()
            live.assert_conformant()
        finally:
            await live.aclose()
        stream_entries = await closed_session_stream(gateway_redis, live.session_id)
        assert stream_entries.frames == sent
        assert stream_entries.event_data("closed")["reason"] == "end"
