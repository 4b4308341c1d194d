"""What a newcomer or an operator gets wrong on first contact, through the real command line:
each mistake is answered with the exact exit code and one line per problem (no traceback),
before anything is started; a running gateway's log says which listener each line is about and
never reports a refused upgrade at ERROR."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
import yaml

from app.redis.embedded import EmbeddedRedis, free_port
from tests.integration.gateway.helpers import running_gateway, wait_for_log
from tests.support.gateway_process import GatewayProcess
from tests.support.raw_client import RawClient

CLI = str(Path(sys.executable).with_name("audiohook-gateway"))
ROOT = Path(__file__).resolve().parents[3]
EXIT_CONFIG = 2
EXIT_START = 1
GOOD_INTEGRATIONS = json.dumps(
    [{"name": "demo", "api_key": "demo-key", "client_secrets": ["c2VjcmV0LXNlY3JldC1zZWNyZXQ="]}]
)


def _clean_env(**settings: str) -> dict[str, str]:
    """This environment without any AUDIOHOOK_* variable, plus `settings` (names unprefixed)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AUDIOHOOK_")}
    env.update({f"AUDIOHOOK_{name}": value for name, value in settings.items()})
    return env


def _cli(
    *args: str, cwd: Path, env: Mapping[str, str], timeout: float = 60
) -> tuple[int, str, str]:
    done = subprocess.run(
        [CLI, *args], cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    return done.returncode, done.stdout, done.stderr


def _one_line_each(code: int, out: str, err: str, expected_code: int, *needles: str) -> list[str]:
    """The command exited with `expected_code` and printed exactly one line per needle, each
    containing its needle, on stderr; nothing else and no traceback."""
    assert code == expected_code, out + err
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == len(needles), err
    for line, needle in zip(lines, needles, strict=True):
        assert needle in line, line
    return lines


# --- refused before anything starts ------------------------------------------------------


def test_serve_with_no_env_file_refuses_to_start_and_says_what_is_missing(tmp_path: Path) -> None:
    result = _cli("serve", "--port", str(free_port()), "--metrics-port", "0", cwd=tmp_path,
                  env=_clean_env())  # fmt: skip
    _one_line_each(
        *result,
        EXIT_CONFIG,
        "no integration configured: set AUDIOHOOK_INTEGRATIONS",
        "AUDIOHOOK_IP_ALLOWLIST_ENABLED=true with no AUDIOHOOK_GENESYS_CLIENT_ID",
    )


def test_an_env_file_that_does_not_exist_is_exit_2(tmp_path: Path) -> None:
    result = _cli("serve", "--env-file", "missing.env", cwd=tmp_path, env=_clean_env())
    _one_line_each(*result, EXIT_CONFIG, "--env-file missing.env: no such file")
    result = _cli("consume", "--env-file", "missing.env", cwd=tmp_path, env=_clean_env())
    _one_line_each(*result, EXIT_CONFIG, "--env-file missing.env: no such file")


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        (
            {"INTEGRATIONS": '[{"name": "demo", "api_key": "k",}]'},
            "AUDIOHOOK_INTEGRATIONS: not valid JSON at line 1 column 34 (char 33)",
        ),
        (
            {"INTEGRATIONS": '[{"name": "demo", "api_key": "k", "client_secrets": ["no!"]}]'},
            "AUDIOHOOK_INTEGRATIONS[0]: client_secrets: Value error, client secret is not valid "
            "base64",
        ),
        ({"PORT": "eighty"}, "AUDIOHOOK_PORT='eighty': Input should be a valid integer"),
        (
            {"TRUSTED_PROXIES": '["10.0.0.0/8",'},
            "AUDIOHOOK_TRUSTED_PROXIES: not valid JSON at line 1 column 15 (char 14)",
        ),
    ],
    ids=["integrations JSON", "secret not base64", "port not a number", "list not JSON"],
)
def test_a_malformed_setting_is_one_line_naming_the_variable(
    tmp_path: Path, settings: dict[str, str], needle: str
) -> None:
    data_dir = tmp_path / "redis"
    env = _clean_env(
        **{"INTEGRATIONS": GOOD_INTEGRATIONS, "IP_ALLOWLIST_ENABLED": "false", **settings},
        REDIS_EMBEDDED_DIR=str(data_dir),
    )
    _one_line_each(*_cli("serve", cwd=tmp_path, env=env), EXIT_CONFIG, needle)
    assert not data_dir.exists()  # the embedded Redis was never started


def test_every_problem_is_reported_at_once_in_reference_order_and_no_secret_is_echoed(
    tmp_path: Path,
) -> None:
    secret = "not-base64-SECRET!"
    env = _clean_env(
        INTEGRATIONS=json.dumps([{"name": "a", "api_key": "k", "client_secrets": [secret]}]),
        PORT="eighty",
        MAX_FRAME_BYTES="0",
        IP_ALLOWLIST_CIDRS="[",
    )
    code, out, err = _cli("serve", cwd=tmp_path, env=env)
    lines = _one_line_each(
        code, out, err, EXIT_CONFIG,
        "AUDIOHOOK_PORT='eighty'",
        "AUDIOHOOK_MAX_FRAME_BYTES='0'",
        "AUDIOHOOK_INTEGRATIONS[0]: client_secrets",
        "AUDIOHOOK_IP_ALLOWLIST_CIDRS: not valid JSON",
    )  # fmt: skip
    assert all(secret not in line for line in lines)


@pytest.mark.parametrize("busy", ["AUDIOHOOK_PORT", "AUDIOHOOK_METRICS_PORT"])
def test_a_port_in_use_is_one_line_and_exit_1_for_either_listener(
    tmp_path: Path, busy: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = {"AUDIOHOOK_PORT": free_port(), "AUDIOHOOK_METRICS_PORT": free_port(), busy: taken}
        data_dir = tmp_path / "redis"
        env = _clean_env(
            INTEGRATIONS=GOOD_INTEGRATIONS,
            IP_ALLOWLIST_ENABLED="false",
            REDIS_EMBEDDED_DIR=str(data_dir),
        )
        result = _cli(
            "serve", "--port", str(ports["AUDIOHOOK_PORT"]),
            "--metrics-port", str(ports["AUDIOHOOK_METRICS_PORT"]), cwd=tmp_path, env=env,
        )  # fmt: skip
    _one_line_each(
        *result, EXIT_START, f"{busy}={taken}: cannot listen on 127.0.0.1:{taken}: address already"
    )
    assert not data_dir.exists()


# --- a local run, start to finish ----------------------------------------------------------


def _wait_ready(process: subprocess.Popen[bytes], metrics_port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"gateway not ready (exit code {process.poll()})")


def test_quick_start_logs_name_their_listener_and_consume_says_the_gateway_is_stopped(
    tmp_path: Path,
) -> None:
    port, metrics_port = free_port(), free_port()
    env_file = ROOT / ".env.example"
    # The quick start's own env file; only the ports and the data directory are moved aside.
    env = _clean_env(REDIS_EMBEDDED_DIR=str(tmp_path / "redis"))
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [CLI, "serve", "--env-file", str(env_file), "--port", str(port),
             "--metrics-port", str(metrics_port)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_ready(process, metrics_port)
        healthy = _cli(
            "healthcheck",
            "--address",
            "127.0.0.1",
            cwd=tmp_path,
            env={**env, "AUDIOHOOK_PORT": str(port), "AUDIOHOOK_METRICS_PORT": str(metrics_port)},
        )
        assert healthy[0] == 0, healthy
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert "Traceback" not in log_path.read_text()
    assert [r["message"] for r in records].count("embedded redis started") == 1
    uvicorn_lines = [r for r in records if r["logger"] == "uvicorn.error"]
    assert {r.get("listener") for r in uvicorn_lines} == {"audiohook", "metrics"}
    started = [r["listener"] for r in uvicorn_lines if r["message"].startswith("Started server")]
    assert sorted(started) == ["audiohook", "metrics"]
    listening = {r["listener"]: r["address"] for r in records if r["message"] == "listening"}
    assert listening == {"audiohook": f"127.0.0.1:{port}", "metrics": f"127.0.0.1:{metrics_port}"}

    # The gateway is stopped: consume says its embedded Redis is not running, and how to start it.
    result = _cli("consume", "--env-file", str(env_file), "--sessions", "1", cwd=tmp_path, env=env)
    _one_line_each(
        *result, EXIT_START, f"the gateway's embedded Redis ({tmp_path / 'redis'}) is not "
        f"running: start audiohook-gateway serve --env-file {env_file} first",
    )  # fmt: skip


def test_consume_with_no_redis_at_all_says_how_to_give_one(tmp_path: Path) -> None:
    result = _cli("consume", cwd=tmp_path, env=_clean_env())
    _one_line_each(*result, EXIT_CONFIG, "no Redis to read: pass --redis-url")


def test_healthcheck_fails_with_one_line_when_a_listener_is_unreachable(tmp_path: Path) -> None:
    env = _clean_env(PORT=str(free_port()), METRICS_PORT=str(free_port()))
    _one_line_each(
        *_cli("healthcheck", "--address", "127.0.0.1", "--timeout", "2", cwd=tmp_path, env=env),
        EXIT_START,
        "/healthz unreachable",
    )


# --- refusals are normal ------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusing_gateway(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """No session slot and a burst of one upgrade per source: the first upgrade gets 503
    (session limit), the next ones 429 (rate limited)."""
    settings = {
        "MAX_SESSIONS": "0",
        "UPGRADE_BURST_PER_SOURCE": "1",
        "UPGRADES_PER_SECOND_PER_SOURCE": "0.001",
    }
    with running_gateway(redis_server, tmp_path_factory.mktemp("refusing"), settings) as process:
        yield process


@pytest.fixture(scope="module")
def allowlist_gateway(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    settings = {"IP_ALLOWLIST_ENABLED": "true", "IP_ALLOWLIST_CIDRS": '["10.0.0.0/8"]'}
    with running_gateway(redis_server, tmp_path_factory.mktemp("allowlist"), settings) as process:
        yield process


async def _refused(gateway: GatewayProcess, status: int, cause: str) -> None:
    request = RawClient.request(gateway.ws_url)
    assert (await RawClient.rejection(request)).status == status
    record = await wait_for_log(
        gateway,
        lambda r: r.get("session_id") == request.session_id and r.get("cause") == cause,
    )
    assert (record["level"], record["message"], record["status"]) == (
        "WARNING", "upgrade refused", status,
    )  # fmt: skip


async def test_refused_upgrades_are_one_warning_with_the_cause_and_nothing_at_error(
    refusing_gateway: GatewayProcess, allowlist_gateway: GatewayProcess
) -> None:
    await _refused(refusing_gateway, 503, "session_limit")
    await _refused(refusing_gateway, 429, "rate_limited")
    await _refused(allowlist_gateway, 403, "ip_not_allowed")
    for gateway in (refusing_gateway, allowlist_gateway):
        records = gateway.log_records()
        errors = [r for r in records if r["level"] in {"ERROR", "CRITICAL"}]
        assert errors == []
        # The gateway's own line is the only one: the server library's ("HTTP response
        # sent", one per refusal) would let a flood of refusals flood the log.
        assert not [r for r in records if r["logger"] == "uvicorn.error" and "HTTP" in r["message"]]


# --- the documented container path ---------------------------------------------------------


def test_readme_compose_env_example_and_image_tell_one_story() -> None:
    readme = (ROOT / "README.md").read_text()
    compose_text = (ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(compose_text)
    dockerfile = (ROOT / "Dockerfile").read_text()
    env_example = (ROOT / ".env.example").read_text()
    # The same command in the README and in the compose file's header.
    assert "docker compose up --build" in readme
    assert "docker compose up --build" in compose_text
    assert "docker compose up\n" not in readme
    # The README's consumer snippet connects to a Redis port that compose publishes.
    redis_ports = compose["services"]["redis"].get("ports", [])
    assert "127.0.0.1:6379:6379" in redis_ports
    assert 'Redis.from_url("redis://127.0.0.1:6379/0")' in readme
    # `docker run --env-file .env` with .env from .env.example keeps the image's all-interface
    # listeners: .env.example does not set them; the image does.
    assert "AUDIOHOOK_HOST=" not in env_example.replace("# ", "")
    assert "AUDIOHOOK_METRICS_HOST=" not in env_example.replace("# ", "")
    assert "AUDIOHOOK_HOST=0.0.0.0" in dockerfile
    assert "AUDIOHOOK_METRICS_HOST=0.0.0.0" in dockerfile
    # The health check is the one that checks what a client reaches.
    assert 'CMD ["audiohook-gateway", "healthcheck"]' in dockerfile
    assert compose["services"]["gateway"]["healthcheck"]["test"] == [
        "CMD", "audiohook-gateway", "healthcheck",
    ]  # fmt: skip
