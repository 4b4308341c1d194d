"""Gateway cost per audio frame: calls kept open while their frames arrive, the gateway's CPU
time (or its instructions, under callgrind) read around them.

    python -m app.bench.frame_cost [--calls 20] [--frames 25] [--rounds 5]
    python -m app.bench.frame_cost --callgrind OUT_DIR [--rounds 2]

Starts a gateway (one worker) and a Redis server of its own on loopback, as `upgrade_cost`
does (unpinned: pin the whole run yourself), and opens `--calls` signed calls. Each round sends
every call `--frames` stereo PCMU frames of 200 ms, one every 200 ms and all calls in the same
slot (as calls whose frames line up), and waits until every frame is in its session's stream.
The calls' idle cost (timers, keepalive pings) is measured over a quiet spell first and
subtracted. Per round: the gateway's cost per frame (CPU µs, or instructions under
callgrind: repeatable, but only the gateway's own user-space work, not the kernel's reads and
writes) and Redis CPU µs per frame. `--gateway-python OTHER_ENV/bin/python` runs another
environment's gateway, to compare two builds the same way. The last line is the median round
as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import redis.asyncio
from websockets.asyncio.client import ClientConnection, connect

from app.bench.auth import Attempt
from app.bench.gateway_cost import GatewayCost, add_callgrind_option, cpu_seconds
from app.bench.spawn import BENCH_API_KEY, SpawnedStack
from app.client.upgrade import Endpoint
from app.redis import keys

FRAME = b"\xff" * 3200  # 200 ms of stereo PCMU silence
FRAME_SECONDS = 0.2


class Calls:
    """Open calls, and how many entries each one's stream held when last counted."""

    def __init__(self) -> None:
        self.sockets: list[ClientConnection] = []
        self.streams: list[str] = []

    async def open(self, stack: SpawnedStack, count: int) -> None:
        endpoint = Endpoint.parse(stack.uri)
        for _ in range(count):
            attempt = Attempt.signed(endpoint, BENCH_API_KEY, stack.client_secret)
            websocket = await connect(
                stack.uri,
                additional_headers=attempt.headers,
                compression=None,
                proxy=None,
                open_timeout=None,
                ping_interval=None,
            )
            await websocket.send(attempt.open_message())
            answer = await websocket.recv()
            if not isinstance(answer, str) or '"opened"' not in answer:
                raise RuntimeError(f"call not opened: {answer!r}; log: {stack.log_path}")
            self.sockets.append(websocket)
            self.streams.append(keys.audio_stream(attempt.session_id))

    async def stream(self, frames: int) -> None:
        """`frames` frames to every call, in real time."""
        started = time.monotonic()
        for number in range(1, frames + 1):
            await asyncio.gather(*(websocket.send(FRAME) for websocket in self.sockets))
            await asyncio.sleep(max(0.0, started + number * FRAME_SECONDS - time.monotonic()))

    async def lengths(self, client: redis.asyncio.Redis) -> list[int]:
        async with client.pipeline(transaction=False) as pipe:
            for stream in self.streams:
                pipe.xlen(stream)
            return [int(length) for length in await pipe.execute()]

    async def wait_published(
        self, client: redis.asyncio.Redis, before: list[int], frames: int
    ) -> None:
        while True:  # polled: the frames' entries are what the round waits for
            lengths = await self.lengths(client)
            if all(now >= start + frames for now, start in zip(lengths, before, strict=True)):
                return
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for websocket in self.sockets:
            await websocket.close()


async def run(cost: GatewayCost, args: argparse.Namespace) -> list[tuple[float, float]]:
    """The rounds: the gateway's cost per frame less its idle cost, Redis CPU µs per frame."""
    calls = Calls()
    redis_process = cost.redis_process()
    client = redis.asyncio.Redis.from_url(cost.stack.redis_url)
    try:
        await calls.open(cost.stack, args.calls)
        await calls.stream(2)  # each call's first frames and its stream's first entries
        await calls.wait_published(client, [0] * args.calls, 2)
        cost.start()
        await asyncio.sleep(args.idle_seconds)
        idle = cost.read() / args.idle_seconds
        print(f"gateway idle with {args.calls} calls open: {idle:,.0f} {cost.unit} per second")
        rows = []
        for number in range(1, args.rounds + 1):
            before = await calls.lengths(client)
            redis_before = cpu_seconds(redis_process)
            cost.start()
            started = time.perf_counter()
            await calls.stream(args.frames)
            await calls.wait_published(client, before, args.frames)
            wall = time.perf_counter() - started
            gateway = cost.read()
            frames = args.calls * args.frames
            per_frame = (gateway - idle * wall) / frames
            redis_us = (cpu_seconds(redis_process) - redis_before) / frames * 1e6
            rows.append((per_frame, redis_us))
            print(
                f"round {number}: {frames} frames in {wall:.2f} s   gateway {per_frame:,.1f} "
                f"{cost.unit}/frame (less idle)   redis {redis_us:,.1f} µs/frame"
            )
        return rows
    finally:
        await calls.close()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="calls open at once")
    parser.add_argument("--frames", type=int, default=25, help="frames per call per round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (5; 2 with callgrind)")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--gateway-python", help="run the gateway with this interpreter")
    add_callgrind_option(parser)
    args = parser.parse_args()
    GatewayCost.check_callgrind(parser, args.callgrind)
    traced = args.callgrind is not None
    args.rounds = args.rounds or (2 if traced else 5)
    cost = GatewayCost(args.callgrind, args.gateway_python)
    try:
        rows = asyncio.run(run(cost, args))
        median = [statistics.median(column) for column in zip(*rows, strict=True)]
        print(
            json.dumps(
                {
                    "calls": args.calls,
                    "frames_per_round": args.calls * args.frames,
                    "rounds": args.rounds,
                    "unit": "instructions" if traced else "cpu_us",
                    "gateway_per_frame": round(median[0], 1),
                    "redis_cpu_us_per_frame": round(median[1], 1),
                }
            )
        )
    finally:
        cost.stop()


if __name__ == "__main__":
    main()
