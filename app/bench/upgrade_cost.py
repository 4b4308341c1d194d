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

Per round: gateway CPU µs per call (Linux's schedstat, or psutil's user + system), the same
less the idle rate, and Redis CPU µs per call. With --callgrind the gateway runs under
valgrind's callgrind (the valgrind package; startup takes a minute or two) and a round reports
instructions per call instead: deterministic to within a fraction of a percent, whatever else
the machine runs, but only the gateway's own user-space work (not the kernel's). Load shedding
is off in that mode: the slowed event loop would shed the calls. The last line is the median
round as JSON.
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
from app.bench.gateway_cost import GatewayCost, add_callgrind_option, cpu_seconds
from app.bench.spawn import BENCH_API_KEY, SpawnedStack
from app.client.upgrade import Endpoint


@dataclass(frozen=True, slots=True)
class Round:
    calls: int
    wall: float
    gateway: float  # CPU µs, or instructions
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


def measure(cost: GatewayCost, calls: int, redis: psutil.Process) -> Round:
    cost.start()
    redis_before = cpu_seconds(redis)
    started = time.perf_counter()
    asyncio.run(run_calls(cost.stack, calls))
    wall = time.perf_counter() - started
    return Round(calls, wall, cost.read(), cpu_seconds(redis) - redis_before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=None, help="calls per round (500; 100)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (5; 2 with callgrind)")
    parser.add_argument("--warmup", type=int, default=30, help="calls before the first round")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    add_callgrind_option(parser)
    args = parser.parse_args()
    GatewayCost.check_callgrind(parser, args.callgrind)
    traced = args.callgrind is not None
    calls = args.calls or (100 if traced else 500)
    rounds = args.rounds or (2 if traced else 5)
    cost = GatewayCost(args.callgrind)
    try:
        redis = cost.redis_process()
        asyncio.run(run_calls(cost.stack, args.warmup))
        cost.start()
        time.sleep(args.idle_seconds)
        idle = cost.read() / args.idle_seconds
        print(f"gateway pid {cost.pid}, idle: {idle:,.0f} {cost.unit} per second")
        rows = []
        for number in range(1, rounds + 1):
            result = measure(cost, calls, redis)
            total, net, redis_us = result.per_call(idle)
            rows.append((total, net, redis_us))
            print(
                f"round {number}: {result.calls} calls in {result.wall:.2f} s   gateway "
                f"{total:,.0f} {cost.unit}/call ({net:,.0f} less idle)   "
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
        cost.stop()


if __name__ == "__main__":
    main()
