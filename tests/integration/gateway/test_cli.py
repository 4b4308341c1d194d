"""`audiohook-gateway simulate` and `audiohook-gateway probe` (subprocesses) against the
running gateway."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import redis.asyncio

from tests.integration.gateway.helpers import secret
from tests.support.gateway_process import TEST_API_KEY, TEST_CLIENT_SECRET, GatewayProcess
from tests.support.session_streams import closed_session_stream

CLI = str(Path(sys.executable).with_name("audiohook-gateway"))


async def _run(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def _simulate(
    gateway: GatewayProcess, *extra: str, client_secret: str = TEST_CLIENT_SECRET
) -> list[str]:
    return [
        "simulate",
        "--uri",
        gateway.ws_url,
        "--api-key",
        TEST_API_KEY,
        "--client-secret",
        client_secret,
        "--seconds",
        "1",
        "--fast",
        *extra,
    ]


async def test_simulate_succeeds_and_prints_its_summary(gateway: GatewayProcess) -> None:
    code, out, err = await _run(*_simulate(gateway, "--sessions", "3"))
    assert code == 0, out + err
    assert "sessions: 3, connected 3, opened 3, closed 3, ok 3" in out
    assert "frames sent: 15" in out  # 1 s in 200 ms frames, three calls
    assert "3 closed after close end" in out


async def test_simulate_json_session_lands_in_redis(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    code, out, err = await _run(*_simulate(gateway, "--json", "--channels", "inverted"))
    assert code == 0, out + err
    result = json.loads(out)
    assert result["ok"] is True
    assert result["selected_media"]["channels"] == ["internal", "external"]
    stream = await closed_session_stream(gateway_redis, result["session_id"])
    assert len(stream.frames) == result["frames_sent"] == 5
    assert sum(len(frame) for frame in stream.frames) == result["bytes_sent"]


async def test_simulate_probe(gateway: GatewayProcess) -> None:
    code, out, err = await _run(*_simulate(gateway, "--probe"))
    assert code == 0, out + err
    assert "ok 1" in out


async def test_simulate_with_a_wrong_secret_fails(gateway: GatewayProcess) -> None:
    code, out, _err = await _run(*_simulate(gateway, client_secret=secret("wrong")))
    assert code != 0
    assert "ok 0" in out
    assert "unauthorized" in out


def _probe(gateway: GatewayProcess, *extra: str) -> list[str]:
    return [
        "probe",
        gateway.ws_url,
        "--api-key",
        TEST_API_KEY,
        "--client-secret",
        TEST_CLIENT_SECRET,
        *extra,
    ]


async def test_probe_cli_passes_against_the_gateway(gateway: GatewayProcess) -> None:
    code, out, err = await _run(*_probe(gateway, "--probe-only"))
    assert code == 0, out + err


async def test_full_probe_with_a_session_passes_every_check(gateway: GatewayProcess) -> None:
    code, out, err = await _run(*_probe(gateway, "--json"))
    assert code == 0, out + err
    report = json.loads(out)
    assert report["ok"] is True
    statuses = {step["name"]: step["status"] for step in report["steps"]}
    assert statuses == {"transport": "warn", "probe": "pass", "session": "pass"}
    errors = [f for step in report["steps"] for f in step["findings"] if f["severity"] == "error"]
    assert errors == []
