"""A gateway (one worker) and a Redis server of the bench's own, on loopback, pinned to cores.

With two or more CPUs the gateway gets CPU 0 to itself; Redis, the load generator and the
stream sampler share the remaining CPUs (so the gateway's CPU figure is its own and it is
never starved by the generator).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.redis.embedded import EmbeddedRedis, free_port

BENCH_API_KEY = "audiohook-bench-key"
WS_PATH = "/api/v1/audiohook/ws"


@dataclass(frozen=True, slots=True)
class Cores:
    gateway: set[int] | None  # None: not pinned
    others: set[int] | None

    @classmethod
    def plan(cls, pin: bool) -> Cores:
        available = sorted(os.sched_getaffinity(0))
        if not pin or len(available) < 2:
            return cls(None, None)
        return cls({available[0]}, set(available[1:]))

    def describe(self) -> str:
        if self.gateway is None or self.others is None:
            return "not pinned (all processes share all CPUs)"
        return (
            f"gateway on CPU {_cpus(self.gateway)}; Redis, load generator and sampler on "
            f"CPU {_cpus(self.others)}"
        )


def _cpus(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def gateway_env(
    redis_url: str,
    port: int,
    metrics_port: int,
    integrations: Sequence[Mapping[str, object]],
    settings: Mapping[str, str],
) -> dict[str, str]:
    """This process's environment plus the AUDIOHOOK_* settings of a gateway listening on
    loopback; `settings` (names without the prefix) come last and win."""
    env = {
        "REDIS_URL": redis_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": str(metrics_port),
        "INTEGRATIONS": json.dumps(integrations),
        "IP_ALLOWLIST_ENABLED": "false",
        "LOG_LEVEL": "INFO",
        **settings,
    }
    return {**os.environ, **{f"AUDIOHOOK_{key}": value for key, value in env.items()}}


def spawn_gateway(
    env: Mapping[str, str],
    log_path: Path,
    python: str | None = None,
    wrapper: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """`audiohook-gateway serve` as a child process, its output appended to `log_path`.
    `python`: the interpreter (and so the installed `app`) to run it with; another checkout's
    virtual environment benches that commit against this one's client. `wrapper`: a command
    the interpreter runs under (valgrind, for example)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        return subprocess.Popen(  # noqa: S603 - the operator's own interpreter path
            # -P: `app` comes from the interpreter's environment, never from the current
            # directory (which may be another checkout).
            [*wrapper, python or sys.executable, "-P", "-m", "app.cli", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def wait_ready(process: subprocess.Popen[bytes], metrics_url: str, timeout: float) -> bool:
    """Poll `metrics_url`/readyz until it answers 200 (True); False once `process` has
    exited or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{metrics_url}/readyz", timeout=0.5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


@dataclass
class SpawnedStack:
    """Start with `start()`, stop with `stop()`; the gateway's log goes to `log_path`."""

    cores: Cores
    settings: dict[str, str] = field(default_factory=dict)  # extra AUDIOHOOK_* without prefix
    python: str | None = None  # the gateway's interpreter, when not this one
    wrapper: tuple[str, ...] = ()  # a command the gateway's interpreter runs under
    client_secret: str = field(
        default_factory=lambda: base64.b64encode(secrets.token_bytes(32)).decode()
    )
    redis: EmbeddedRedis | None = None
    gateway: subprocess.Popen[bytes] | None = None
    port: int = 0
    metrics_port: int = 0
    log_path: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="ahg-bench-")) / "gateway.log"
    )

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}{WS_PATH}"

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def start(self, timeout: float = 30.0) -> SpawnedStack:
        self.redis = EmbeddedRedis()
        self.redis.start()
        if self.cores.others and self.redis.pid:
            os.sched_setaffinity(self.redis.pid, self.cores.others)
        self.port, self.metrics_port = free_port(), free_port()
        integrations = [
            {"name": "bench", "api_key": BENCH_API_KEY, "client_secrets": [self.client_secret]}
        ]
        env = gateway_env(
            self.redis.url,
            self.port,
            self.metrics_port,
            integrations,
            {
                # One source address opens every call: lift the per-source and session limits.
                "UPGRADES_PER_SECOND_PER_SOURCE": "1000000",
                "UPGRADE_BURST_PER_SOURCE": "1000000",
                "MAX_SESSIONS": "100000",
                **self.settings,
            },
        )
        self.gateway = spawn_gateway(env, self.log_path, self.python, self.wrapper)
        if self.cores.gateway:
            os.sched_setaffinity(self.gateway.pid, self.cores.gateway)
        if self.cores.others:
            os.sched_setaffinity(0, self.cores.others)
        if wait_ready(self.gateway, f"http://127.0.0.1:{self.metrics_port}", timeout):
            return self
        if self.gateway.poll() is not None:
            raise RuntimeError(f"gateway exited early; log: {self.log_path}")
        self.stop()
        raise RuntimeError(f"gateway not ready in {timeout:g} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.terminate()
            try:
                self.gateway.wait(30)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait()
        if self.redis is not None:
            self.redis.stop()
