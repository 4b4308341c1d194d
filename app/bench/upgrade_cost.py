"""Gateway CPU per accepted upgrade: N signed calls one after another, the gateway's CPU time
(or its instructions, under callgrind) read before and after.

    python -m app.bench.upgrade_cost [--calls 500] [--rounds 5]
    python -m app.bench.upgrade_cost --callgrind OUT_DIR [--calls 100] [--rounds 2]

Starts a gateway (one worker) and a Redis server of its own on loopback, as `bench --spawn`
does but unpinned: pin the whole run yourself (`taskset -c 1 python -m app.bench.upgrade_cost`)
so the figures do not depend on what else the machine runs. Each call is a signed upgrade,
`open`, `opened`, `close`, `closed` and the WebSocket close: what every accepted call costs the
gateway apart from its audio. Calls are sequential, so the gateway is idle between them; its
idle cost over the same wall time (measured with no calls) is reported and subtracted.

Per round: gateway CPU µs per call (user + system, from psutil), the same less the idle
rate, and Redis CPU µs per call. With --callgrind the gateway runs under valgrind's callgrind
(the valgrind package; startup takes a minute or two) and a round reports instructions per
call instead: deterministic to within a fraction of a percent, whatever else the machine
runs, but only the gateway's own user-space work (not the kernel's). Load shedding is off in
that mode: the slowed event loop would shed the calls. The last line is the median round as
JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from app.bench.auth import Attempt, connect_and_open
from app.bench.spawn import BENCH_API_KEY, Cores, SpawnedStack
from app.client.upgrade import Endpoint

# Under callgrind the event loop runs ~50x slower: no load shedding, a patient Redis client.
CALLGRIND_SETTINGS = {
    "OVERLOAD_MAX_EVENT_LOOP_LAG_SECONDS": "0",
    "OVERLOAD_MAX_CPU_UTILIZATION": "0",
    "OVERLOAD_MAX_CPU_UTILIZATION_UNDER_LIMIT": "0",
    "OVERLOAD_MAX_HANDSHAKE_AGE_SECONDS": "0",
    "REDIS_TIMEOUT_SECONDS": "10",
}


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


class Callgrind:
    """Instructions of a process running under callgrind: zero its counters, read them."""

    def __init__(self, pid: int, out_dir: Path) -> None:
        self._pid = pid
        self._out_dir = out_dir

    @staticmethod
    def wrapper(out_dir: Path) -> tuple[str, ...]:
        out_dir.mkdir(parents=True, exist_ok=True)
        return (
            "valgrind",
            "--tool=callgrind",
            "--vgdb=yes",
            f"--callgrind-out-file={out_dir}/callgrind.out.%p",
        )

    def _control(self, option: str) -> None:
        subprocess.run(  # noqa: S603 - valgrind's own tool, on our child's pid
            ["callgrind_control", option, str(self._pid)],  # noqa: S607
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def zero(self) -> None:
        self._control("--zero")

    def instructions(self) -> int:
        """Instructions since the last `zero` (dumps the counters to a new file)."""
        self._control("--dump")
        dumps = sorted(
            self._out_dir.glob(f"callgrind.out.{self._pid}.*"), key=lambda p: p.stat().st_mtime
        )
        found = re.search(r"^summary: (\d+)$", dumps[-1].read_text(), re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no summary line in {dumps[-1]}")
        return int(found.group(1))


@dataclass(frozen=True, slots=True)
class Round:
    calls: int
    wall: float
    gateway: float  # CPU seconds, or instructions
    redis_cpu: float

    def per_call(self, idle_rate: float) -> tuple[float, float, float]:
        """Gateway cost per call, the same less the idle cost over the round's wall time,
        Redis CPU µs per call."""
        return (
            self.gateway / self.calls,
            (self.gateway - idle_rate * self.wall) / self.calls,
            self.redis_cpu / self.calls * 1e6,
        )


async def run_calls(stack: SpawnedStack, count: int) -> None:
    endpoint = Endpoint.parse(stack.uri)
    for _ in range(count):
        attempt = Attempt.signed(endpoint, BENCH_API_KEY, stack.client_secret)
        answer = await connect_and_open(stack.uri, attempt)
        if answer.kind != "opened":
            raise RuntimeError(f"call not opened: {answer}; log: {stack.log_path}")


def measure(
    stack: SpawnedStack,
    calls: int,
    start: Callable[[], None],
    read: Callable[[], float],
    redis: psutil.Process,
) -> Round:
    start()
    redis_before = cpu_seconds(redis)
    started = time.perf_counter()
    asyncio.run(run_calls(stack, calls))
    wall = time.perf_counter() - started
    return Round(calls, wall, read(), cpu_seconds(redis) - redis_before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=None, help="calls per round (500; 100)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (5; 2 with callgrind)")
    parser.add_argument("--warmup", type=int, default=30, help="calls before the first round")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument(
        "--callgrind",
        type=Path,
        metavar="OUT_DIR",
        help="count the gateway's instructions under valgrind's callgrind (dumps in OUT_DIR)",
    )
    args = parser.parse_args()
    traced = args.callgrind is not None
    if traced and shutil.which("callgrind_control") is None:
        parser.error("--callgrind needs valgrind (callgrind_control) on PATH")
    calls = args.calls or (100 if traced else 500)
    rounds = args.rounds or (2 if traced else 5)
    stack = SpawnedStack(
        Cores.plan(pin=False),
        {"LOG_LEVEL": "INFO", **(CALLGRIND_SETTINGS if traced else {})},
        wrapper=Callgrind.wrapper(args.callgrind) if traced else (),
    ).start(timeout=600 if traced else 30)
    try:
        assert stack.gateway is not None
        assert stack.redis is not None
        assert stack.redis.pid is not None
        gateway, redis = psutil.Process(stack.gateway.pid), psutil.Process(stack.redis.pid)
        if traced:
            counter = Callgrind(stack.gateway.pid, args.callgrind)
            start: Callable[[], None] = counter.zero
            read: Callable[[], float] = counter.instructions
            unit, scale = "instructions", 1.0
        else:
            baseline = [0.0]

            def start() -> None:
                baseline[0] = cpu_seconds(gateway)

            def read() -> float:
                return cpu_seconds(gateway) - baseline[0]

            unit, scale = "µs", 1e6
        asyncio.run(run_calls(stack, args.warmup))
        start()
        time.sleep(args.idle_seconds)
        idle = read() / args.idle_seconds
        print(f"gateway pid {gateway.pid}, idle: {idle * scale:,.0f} {unit} per second")
        rows = []
        for number in range(1, rounds + 1):
            result = measure(stack, calls, start, read, redis)
            total, net, redis_us = result.per_call(idle)
            rows.append((total * scale, net * scale, redis_us))
            print(
                f"round {number}: {result.calls} calls in {result.wall:.2f} s   gateway "
                f"{total * scale:,.0f} {unit}/call ({net * scale:,.0f} less idle)   "
                f"redis {redis_us:,.0f} µs/call"
            )
        median = [statistics.median(column) for column in zip(*rows, strict=True)]
        print(
            json.dumps(
                {
                    "calls_per_round": calls,
                    "rounds": rounds,
                    "unit": "instructions" if traced else "cpu_us",
                    "gateway_per_call": round(median[0], 1),
                    "gateway_per_call_less_idle": round(median[1], 1),
                    "redis_cpu_us_per_call": round(median[2], 1),
                }
            )
        )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
