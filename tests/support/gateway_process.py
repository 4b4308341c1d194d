"""Run the real gateway (``audiohook-gateway serve``) as a child process on loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

from app.bench.spawn import gateway_env, spawn_gateway, wait_ready
from app.redis.embedded import free_port

# A demo integration for tests: the API key and secret of the test vector of docs/protocol.md §2.8.
TEST_API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
TEST_CLIENT_SECRET = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="
TEST_ORG_ID = "d7934305-0972-4844-938e-9060eef73d05"

TEST_INTEGRATION: dict[str, object] = {
    "name": "test",
    "api_key": TEST_API_KEY,
    "client_secrets": [TEST_CLIENT_SECRET],
}
DEFAULT_INTEGRATIONS = [TEST_INTEGRATION]

# The load-shedding signals that follow the machine's speed, off unless a test sets them: on a
# busy test machine a late event-loop wake-up makes the worker look strained, and it would then
# refuse with 503 the upgrades a test sends (those with an old `created`, even at once).
# tests/integration/resilience/test_load_shedding.py sets them where they are the subject.
MACHINE_SPEED_SHEDDING_OFF = {
    "OVERLOAD_MAX_EVENT_LOOP_LAG_SECONDS": "0",
    "OVERLOAD_MAX_CPU_UTILIZATION": "0",
    "OVERLOAD_MAX_CPU_UTILIZATION_UNDER_LIMIT": "0",
    "OVERLOAD_CPU_THROTTLED_HOLD_SECONDS": "0",
}

# The interpreter of an environment with the compiled build installed (`make test-compiled`
# sets it): the gateway processes of the tests then run the compiled modules. Unset, they run
# this environment's `app`, i.e. the source tree.
COMPILED_GATEWAY_PYTHON = os.environ.get("TEST_COMPILED_GATEWAY_PYTHON") or None


class GatewayProcess:
    """A gateway child process; ``env`` entries are AUDIOHOOK_* settings without the prefix."""

    def __init__(
        self,
        redis_url: str,
        log_path: Path,
        settings: Mapping[str, str] | None = None,
        integrations: list[dict[str, object]] | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.wrapper = wrapper  # a command the gateway's interpreter runs under
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path
        self.env = gateway_env(
            redis_url,
            self.port,
            self.metrics_port,
            integrations or DEFAULT_INTEGRATIONS,
            {
                "AUTH_MIN_FAILURE_DELAY_SECONDS": "0.2",
                **MACHINE_SPEED_SHEDDING_OFF,
                **(settings or {}),
            },
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/audiohook/ws"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        self.process = spawn_gateway(self.env, self.log_path, COMPILED_GATEWAY_PYTHON, self.wrapper)
        if wait_ready(self.process, self.metrics_url, timeout):
            return self
        if self.process.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{self.log_tail()}")
        self.stop()
        raise RuntimeError(f"gateway not ready in {timeout}s:\n{self.log_tail()}")

    def terminate(self) -> None:
        """Send SIGTERM (a graceful drain) without waiting."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def metrics_text(self) -> str:
        return httpx.get(f"{self.metrics_url}/metrics", timeout=5).text

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_gateway(
    redis_url: str,
    log_path: Path,
    settings: Mapping[str, str] | None = None,
    integrations: list[dict[str, object]] | None = None,
    *,
    base_settings: Mapping[str, str] | None = None,
) -> Iterator[GatewayProcess]:
    """A gateway child process on loopback ports, stopped on exit: `settings` over the
    suite's `base_settings`; `integrations` default to the test integration alone. The
    gateway and end-to-end suites call it through their own helpers, which supply their
    base settings and integrations."""
    process = GatewayProcess(
        redis_url,
        log_path,
        settings={**(base_settings or {}), **(settings or {})},
        integrations=integrations or DEFAULT_INTEGRATIONS,
    )
    with process:
        yield process
