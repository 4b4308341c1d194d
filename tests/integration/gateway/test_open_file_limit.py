"""A worker holds one descriptor per connection. Started under a soft open-file limit below
what its calls need (1,024 is a common default), it raises the limit to the hard one
(app/open_files.py); otherwise the kernel resets connections past it, calls and probes alike,
before the gateway sees them. And connections that send nothing, from many sources each
within its own bound, cannot take the descriptors its live calls and metrics need."""

from __future__ import annotations

import contextlib
import resource
import socket
import sys
from pathlib import Path

import redis.asyncio

from app.open_files import SPARE_DESCRIPTORS
from app.redis.embedded import EmbeddedRedis
from tests.integration.gateway.helpers import BASE_SETTINGS, INTEGRATIONS, alongside_good_call
from tests.integration.resilience.helpers import good_call
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import REJECTED, wait_for_metric

LOW_SOFT_LIMIT = 256
IDLE_CONNECTIONS = 400  # more than the low limit lets a process hold

# Runs the gateway's interpreter with the soft limit lowered, as a service manager may.
LOWER_SOFT_LIMIT = (
    "import os, resource, sys; "
    "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LOW_SOFT_LIMIT}, hard)); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


# Both limits lowered to this many descriptors: the calls' (MAX_SESSIONS), the spare ones, and
# the rest for connections without a whole request head.
DESCRIPTORS = 2400
MAX_SESSIONS = 50
UNFINISHED_BOUND = DESCRIPTORS - MAX_SESSIONS - SPARE_DESCRIPTORS  # 1,326: above the floor
FLOOD = 2600  # connections that send nothing: more than the gateway could open
FLOOD_SOURCES = 11  # 237 each, under the per-source bound of 256
UNFINISHED = "audiohook_connections_without_request_head"
LOWER_BOTH_LIMITS = (
    "import os, resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({DESCRIPTORS}, {DESCRIPTORS})); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def raise_own_limit(needed: int) -> None:
    """This test holds its idle connections itself: its own soft limit must allow them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed + 512:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_file_limits(pid: int) -> tuple[str, str]:
    """(soft, hard) of a process's open-file limit, as /proc shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open-file limit in /proc")


async def test_a_gateway_started_under_a_low_soft_limit_holds_more_connections(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    raise_own_limit(IDLE_CONNECTIONS)
    gateway = GatewayProcess(
        redis_server.url,
        tmp_path / "gateway.log",
        {**BASE_SETTINGS, "OPEN_TIMEOUT_SECONDS": "60"},
        INTEGRATIONS,
        wrapper=(sys.executable, "-c", LOWER_SOFT_LIMIT),
    )
    with gateway, contextlib.ExitStack() as idle:
        assert gateway.process is not None
        gateway_soft, gateway_hard = open_file_limits(gateway.process.pid)
        assert gateway_soft == gateway_hard
        assert int(gateway_soft) > IDLE_CONNECTIONS + 100
        for index in range(IDLE_CONNECTIONS):
            # From four addresses: one may hold only 256 connections without a request head.
            source = (f"127.0.1.{index % 4 + 1}", 0)
            idle.enter_context(socket.create_connection(("127.0.0.1", gateway.port), None, source))
        await good_call(gateway)  # accepted beyond the low limit
        records = [r for r in gateway.log_records() if r["message"] == "open file limit"]
        assert [r["open_file_limit"] for r in records] == [int(gateway_soft)]


def limited_gateway(
    redis_server: EmbeddedRedis, tmp_path: Path, settings: dict[str, str] | None = None
) -> GatewayProcess:
    """A gateway under the lowered limits, its connections without a head held for a minute."""
    raise_own_limit(FLOOD)
    return GatewayProcess(
        redis_server.url,
        tmp_path / "gateway.log",
        {
            **BASE_SETTINGS,
            "OPEN_TIMEOUT_SECONDS": "60",
            "MAX_SESSIONS": str(MAX_SESSIONS),
            **(settings or {}),
        },
        INTEGRATIONS,
        wrapper=(sys.executable, "-c", LOWER_BOTH_LIMITS),
    )


def flood(gateway: GatewayProcess, idle: contextlib.ExitStack, sources: int) -> None:
    """FLOOD connections that send nothing, from `sources` addresses in 127.0.2.0/24."""
    for index in range(FLOOD):
        source = (f"127.0.2.{index % sources + 1}", 0)
        address = ("127.0.0.1", gateway.port)
        idle.enter_context(socket.create_connection(address, None, source))


async def test_many_sources_cannot_take_the_descriptors_live_calls_and_metrics_need(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    gateway = limited_gateway(redis_server, tmp_path)
    async with redis.asyncio.Redis.from_url(redis_server.url) as redis_client:
        with gateway, contextlib.ExitStack() as idle:
            async with alongside_good_call(gateway.ws_url, redis_client) as call:
                flood(gateway, idle, FLOOD_SOURCES)
                # Past the bound each is closed as it connects, and the metrics listener
                # still has descriptors to answer with.
                await wait_for_metric(
                    gateway, REJECTED, FLOOD - UNFINISHED_BOUND, timeout=20,
                    cause="too_many_connections",
                )  # fmt: skip
                await call.wait_frames(10)  # the live call streams on, every frame kept


async def test_sources_outside_the_allowlist_cannot_keep_its_calls_out(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """They may hold only half of the total; with the per-source bound off, one holds it all."""
    settings = {
        "IP_ALLOWLIST_ENABLED": "true",
        "IP_ALLOWLIST_CIDRS": '["127.0.0.1/32"]',
        "MAX_UNFINISHED_REQUESTS_PER_SOURCE": "0",
    }
    with limited_gateway(redis_server, tmp_path, settings) as gateway:
        for wave in (1, 2):  # the second finds the first's places given back
            with contextlib.ExitStack() as idle:
                flood(gateway, idle, sources=1)
                await wait_for_metric(
                    gateway, REJECTED, wave * (FLOOD - UNFINISHED_BOUND // 2), timeout=20,
                    cause="too_many_connections",
                )  # fmt: skip
                await wait_for_metric(gateway, UNFINISHED, UNFINISHED_BOUND // 2)
                await good_call(gateway)  # from 127.0.0.1, in the allowlist
            await wait_for_metric(gateway, UNFINISHED, 0, timeout=20)
