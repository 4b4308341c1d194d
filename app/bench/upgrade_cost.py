"""Gateway CPU per accepted upgrade: N signed calls one after another, the gateway's CPU time
read before and after.

    python -m app.bench.upgrade_cost [--calls 500] [--rounds 5]

Starts a gateway (one worker) and a Redis server of its own on loopback, as `bench --spawn`
does but unpinned: pin the whole run yourself (`taskset -c 1 python -m app.bench.upgrade_cost`)
so the figures do not depend on what else the machine runs. Each call is a signed upgrade,
`open`, `opened`, `close`, `closed` and the WebSocket close: what every accepted call costs the
gateway apart from its audio. Calls are sequential, so the gateway is idle between them; its
idle CPU over the same wall time (measured with no calls) is reported and subtracted.

Per round: gateway CPU µs per call (user + system, from psutil), the same less the idle
rate, and Redis CPU µs per call. The last line is the median round as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import psutil

from app.bench.auth import Attempt, connect_and_open
from app.bench.spawn import BENCH_API_KEY, Cores, SpawnedStack
from app.client.upgrade import Endpoint


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass(frozen=True, slots=True)
class Round:
    calls: int
    wall: float
    gateway_cpu: float
    redis_cpu: float

    def per_call_us(self, idle_rate: float) -> tuple[float, float, float]:
        """Gateway µs per call, the same less idle CPU over the round's wall time, Redis µs."""
        gateway = self.gateway_cpu / self.calls * 1e6
        net = (self.gateway_cpu - idle_rate * self.wall) / self.calls * 1e6
        return gateway, net, self.redis_cpu / self.calls * 1e6


async def run_calls(stack: SpawnedStack, count: int) -> None:
    endpoint = Endpoint.parse(stack.uri)
    for _ in range(count):
        attempt = Attempt.signed(endpoint, BENCH_API_KEY, stack.client_secret)
        answer = await connect_and_open(stack.uri, attempt)
        if answer.kind != "opened":
            raise RuntimeError(f"call not opened: {answer}")


def measure(
    stack: SpawnedStack, gateway: psutil.Process, redis: psutil.Process, calls: int
) -> Round:
    gateway_before, redis_before = cpu_seconds(gateway), cpu_seconds(redis)
    started = time.perf_counter()
    asyncio.run(run_calls(stack, calls))
    wall = time.perf_counter() - started
    return Round(
        calls, wall, cpu_seconds(gateway) - gateway_before, cpu_seconds(redis) - redis_before
    )


def idle_rate(gateway: psutil.Process, seconds: float) -> float:
    """The gateway's CPU seconds per wall second with no calls."""
    before = cpu_seconds(gateway)
    time.sleep(seconds)
    return (cpu_seconds(gateway) - before) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=50, help="calls before the first round")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    args = parser.parse_args()
    stack = SpawnedStack(Cores.plan(pin=False), {"LOG_LEVEL": "INFO"}).start()
    try:
        assert stack.gateway is not None
        assert stack.redis is not None
        assert stack.redis.pid is not None
        gateway, redis = psutil.Process(stack.gateway.pid), psutil.Process(stack.redis.pid)
        asyncio.run(run_calls(stack, args.warmup))
        idle = idle_rate(gateway, args.idle_seconds)
        print(f"gateway pid {gateway.pid}, idle CPU {idle * 1e3:.2f} ms per second")
        rows = []
        for number in range(1, args.rounds + 1):
            result = measure(stack, gateway, redis, args.calls)
            rows.append(result.per_call_us(idle))
            total, net, redis_us = rows[-1]
            print(
                f"round {number}: {args.calls} calls in {result.wall:.2f} s   gateway "
                f"{total:7.1f} µs/call ({net:7.1f} less idle)   redis {redis_us:6.1f} µs/call"
            )
        median = [statistics.median(column) for column in zip(*rows, strict=True)]
        print(
            json.dumps(
                {
                    "calls_per_round": args.calls,
                    "rounds": args.rounds,
                    "gateway_us_per_call": round(median[0], 1),
                    "gateway_us_per_call_less_idle": round(median[1], 1),
                    "redis_us_per_call": round(median[2], 1),
                }
            )
        )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
