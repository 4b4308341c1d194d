"""Real Redis servers for tests: outages on a fixed port, and a 3-master loopback cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path

from app.redis.embedded import (
    LOOPBACK,
    EmbeddedRedis,
    EmbeddedRedisError,
    find_redis_binary,
    free_port,
)


@contextmanager
def redis_stopped(server: EmbeddedRedis) -> Iterator[None]:
    """Stop `server` for the duration of the block, then start it again on the same port.

    Data survives only when the server was created with appendonly=True.
    """
    server.stop(keep_data=True)
    try:
        yield
    finally:
        server.start()


@asynccontextmanager
async def redis_outage(server: EmbeddedRedis) -> AsyncIterator[None]:
    """Async form of redis_stopped: the blocking stop/start run in a worker thread."""
    await asyncio.to_thread(server.stop, keep_data=True)
    try:
        yield
    finally:
        await asyncio.to_thread(server.start)


@contextmanager
def redis_stalled(server: EmbeddedRedis) -> Iterator[None]:
    """Freeze `server` with SIGSTOP for the duration of the block (connections stay open and
    commands queue unanswered, as with a stalled host), then SIGCONT it."""
    pid = server.pid
    assert pid is not None, "the server is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


class RedisCluster:
    """`masters` redis-server processes in cluster mode on loopback, joined with redis-cli."""

    def __init__(self, base_dir: Path, masters: int = 3) -> None:
        self.nodes = [
            EmbeddedRedis(
                # The cluster bus listens on port + 10000: pick ports that leave room for it.
                port=_cluster_port(),
                data_dir=base_dir / f"node{i}",
                extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            )
            for i in range(masters)
        ]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """A URL of one node; the cluster client discovers the others."""
        return self.nodes[0].url

    def start(self, timeout: float = 20.0) -> None:
        for node in self.nodes:
            node.start()
        cli = find_redis_binary("redis-cli")
        addresses = [f"{LOOPBACK}:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_cluster_ok(cli, node.port) for node in self.nodes):
                return
            time.sleep(0.1)
        raise EmbeddedRedisError("cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            with suppress(Exception):
                node.stop()

    def __enter__(self) -> RedisCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_port() -> int:
    for _ in range(50):
        port = free_port()
        if port + 10000 <= 65535:
            return port
    raise EmbeddedRedisError("no port with a free cluster bus port")


def _cluster_ok(cli: str, port: int) -> bool:
    out = subprocess.run(
        [cli, "-h", LOOPBACK, "-p", str(port), "cluster", "info"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout
    return "cluster_state:ok" in out
