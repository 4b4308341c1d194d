"""Configuration and session-id conflicts get clear answers instead of crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.redis.embedded import EmbeddedRedis
from tests.support.gateway_process import DEFAULT_INTEGRATIONS, GatewayProcess
from tests.support.raw_client import RawClient


async def test_a_second_connection_with_a_live_session_id_is_ended_with_an_error(
    gateway: GatewayProcess,
) -> None:
    async with await RawClient.connect(gateway.ws_url) as first:
        await first.open()
        await first.send_audio(bytes(3200))
        async with await RawClient.connect(gateway.ws_url, session_id=first.session_id) as second:
            await second.open()
            disconnect = await second.expect_disconnect("error")
            assert disconnect.info == "Server Error: session cannot be recorded"
            await second.close("disconnect")
        # The first session is unharmed and still streams.
        await first.send_audio(bytes(3200))
        await first.send("ping", {})
        await first.expect("pong")
        await first.close()


def test_an_integration_naming_an_unknown_encryption_key_stops_startup(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    integrations = [{**DEFAULT_INTEGRATIONS[0], "encryption_key_id": "missing-key"}]
    process = GatewayProcess(redis_server.url, tmp_path / "gateway.log", integrations=integrations)
    with pytest.raises(RuntimeError, match="exited early"):
        process.start(timeout=20)
    assert process.process is not None
    assert process.process.returncode == 3
    errors = [r for r in process.log_records() if r.get("level") == "ERROR"]
    assert any("missing-key" in json.dumps(record) for record in errors)
