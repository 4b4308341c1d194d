"""Soak: N real-time calls, recycled for M minutes against one gateway. Is memory flat?

    python -m app.bench.soak --sessions 300 --minutes 10       # spawns gateway + Redis
    python -m app.bench.soak --uri ws://127.0.0.1:8080/api/v1/audiohook/ws --api-key K \\
        --client-secret S --redis-url redis://127.0.0.1:6379/0 --gateway-pid 1234

N slots each place Genesys-like calls (app.client: signed upgrade, stereo PCMU in 200 ms
frames at real-time pace, pings, close) back to back, each --call-seconds long. The slots
start staggered over one call length, so about N calls are live at any moment and about N
calls begin and end every call length: a leak per session lifecycle shows as steady growth.

Every --sample-seconds the gateway process's RSS and CPU are sampled with psutil. Each
finished call is checked in Redis: audio entries stored (XLEN of its session stream minus its
event entries, which the `closed` entry's `seq` counts) against frames sent by the client
and frames counted by the gateway. At the end: RSS over time, the least-squares slope of RSS
over the last two thirds of the run (the first third is warm-up: every slot starts and
allocators settle), per minute and per call, and a verdict. Exit status 0 when memory is flat,
no frame was lost and every call succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import orjson
import psutil
import redis.asyncio

from app.bench.spawn import BENCH_API_KEY, Cores, SpawnedStack
from app.client import ClientSession, Pacer, PcmSource, SessionConfig, SessionResult, tone_source
from app.protocol.media import MediaFormat
from app.redis import keys

MIB = 1024 * 1024
Entries = list[tuple[bytes, dict[bytes, bytes]]]
MIN_CALL_SECONDS = 2
FRAMES_PER_SECOND = 5  # 200 ms frames


@dataclass(frozen=True, slots=True)
class Plan:
    uri: str
    api_key: str
    client_secret: str | None
    sessions: int
    seconds: float  # whole run
    call_seconds: int
    sample_seconds: float
    max_leak_bytes_per_call: int


@dataclass
class Tally:
    """What the calls did, and what Redis holds of them."""

    live: int = 0
    started: int = 0
    finished: int = 0
    ok: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    frames_sent: int = 0
    frames_received: int = 0  # the gateway's own count, from each `closed` event
    frames_stored: int = 0
    frames_lost: int = 0  # as the gateway reported them in `closed`
    checked: int = 0
    unchecked: int = 0  # no `closed` entry appeared in Redis
    short: list[str] = field(default_factory=list)  # sessions with fewer frames stored than sent

    def record(self, result: SessionResult) -> None:
        self.finished += 1
        self.frames_sent += result.frames_sent
        if result.ok:
            self.ok += 1
        elif result.errors:
            self.problems[result.errors[0].rule] += 1
        else:
            self.problems["not ok"] += 1


@dataclass(frozen=True, slots=True)
class Sample:
    elapsed: float
    rss: int
    cpu_percent: float  # gateway CPU since the previous sample (100 = one core)
    generator_cpu_percent: float
    live: int
    finished: int


@dataclass(frozen=True, slots=True)
class FirstSeconds:
    """The first `seconds` of a shared source: the same frame objects, no new encoding."""

    source: PcmSource
    seconds: int

    def frames(self, media: MediaFormat) -> Sequence[bytes]:
        return self.source.frames(media)[: self.seconds * FRAMES_PER_SECOND]


async def stored_counts(
    client: redis.asyncio.Redis, session_id: str, wait_seconds: float = 15.0
) -> tuple[int, int, int] | None:
    """(audio entries stored, frames the gateway counted, frames it lost) once the session's
    `closed` entry is in Redis; None if it never appears."""
    key = keys.audio_stream(session_id)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        last = cast(Entries, await client.xrevrange(key, count=1))
        if last and last[0][1].get(b"type") == b"closed":
            fields = last[0][1]
            length = await client.xlen(key)
            data = orjson.loads(fields[b"data"])
            counts = data.get("counts") or {}
            stored = length - int(fields[b"seq"])  # every event entry has a seq: 1, 2, ...
            return stored, int(counts.get("frames", 0)), int(data.get("frames_lost", 0))
        await asyncio.sleep(0.25)
    return None


async def check_stored(
    client: redis.asyncio.Redis | None, result: SessionResult, tally: Tally
) -> None:
    if client is None or not result.opened:
        return
    counts = await stored_counts(client, result.session_id)
    if counts is None:
        tally.unchecked += 1
        return
    stored, received, lost = counts
    tally.checked += 1
    tally.frames_stored += stored
    tally.frames_received += received
    tally.frames_lost += lost
    if stored != result.frames_sent and len(tally.short) < 10:
        tally.short.append(f"{result.session_id}: sent {result.frames_sent}, stored {stored}")


async def run_slot(
    index: int,
    plan: Plan,
    pacer: Pacer,
    audio: PcmSource,
    tally: Tally,
    redis_client: redis.asyncio.Redis | None,
    checks: set[asyncio.Task[None]],
    end: float,
) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(index * plan.call_seconds / plan.sessions)
    while (remaining := int(end - loop.time())) >= MIN_CALL_SECONDS:
        config = SessionConfig(
            uri=plan.uri,
            api_key=plan.api_key,
            client_secret=plan.client_secret,
            source=FirstSeconds(audio, min(plan.call_seconds, remaining)),
            record_frames=False,
        )
        tally.started += 1
        tally.live += 1
        try:
            result = await ClientSession(config, pacer=pacer).run()
        finally:
            tally.live -= 1
        tally.record(result)
        check = asyncio.create_task(check_stored(redis_client, result, tally))
        checks.add(check)
        check.add_done_callback(checks.discard)


async def sample_loop(
    plan: Plan, gateway: psutil.Process, tally: Tally, samples: list[Sample], started: float
) -> None:
    me = psutil.Process()
    gateway.cpu_percent(None)
    me.cpu_percent(None)
    print(f"{'time':>6} {'RSS MiB':>8} {'CPU %':>6} {'gen CPU %':>9} {'live':>5} {'done':>6}")
    while True:
        await asyncio.sleep(plan.sample_seconds)
        sample = Sample(
            time.monotonic() - started,
            gateway.memory_info().rss,
            gateway.cpu_percent(None),
            me.cpu_percent(None),
            tally.live,
            tally.finished,
        )
        samples.append(sample)
        print(
            f"{sample.elapsed:5.0f}s {sample.rss / MIB:8.1f} {sample.cpu_percent:6.1f} "
            f"{sample.generator_cpu_percent:9.1f} {sample.live:5d} {sample.finished:6d}",
            flush=True,
        )


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


@dataclass(frozen=True, slots=True)
class Verdict:
    flat: bool
    text: str


def memory_verdict(samples: Sequence[Sample], plan: Plan) -> Verdict:
    window = [s for s in samples if s.elapsed >= plan.seconds / 3]
    if len(window) < 3:
        return Verdict(False, "too few samples after warm-up for a verdict (run longer)")
    rss_slope = slope([(s.elapsed, float(s.rss)) for s in window])  # bytes per second
    calls_per_second = slope([(s.elapsed, float(s.finished)) for s in window])
    span = window[-1].elapsed - window[0].elapsed
    per_call = rss_slope / calls_per_second if calls_per_second > 0 else float("inf")
    low, high = min(s.rss for s in window), max(s.rss for s in window)
    flat = per_call <= plan.max_leak_bytes_per_call
    text = (
        f"after warm-up ({window[0].elapsed:.0f}-{window[-1].elapsed:.0f} s, {len(window)} "
        f"samples): RSS {low / MIB:.1f}-{high / MIB:.1f} MiB, slope "
        f"{rss_slope * 60 / MIB:+.3f} MiB/min ({rss_slope * 3600 / MIB:+.1f} MiB/h), "
        f"{calls_per_second * 60:.0f} calls/min -> {per_call:+.0f} bytes per call "
        f"(limit {plan.max_leak_bytes_per_call}); change over the window "
        f"{rss_slope * span / MIB:+.2f} MiB\n"
        f"verdict: {'FLAT' if flat else 'GROWING'}"
    )
    return Verdict(flat, text)


async def soak(
    plan: Plan, gateway_pid: int, redis_url: str | None
) -> tuple[Tally, list[Sample], Verdict]:
    gateway = psutil.Process(gateway_pid)
    # A blocking pool: calls ending together queue their checks instead of failing with
    # "Too many connections".
    redis_client = (
        redis.asyncio.Redis.from_pool(
            redis.asyncio.BlockingConnectionPool.from_url(redis_url, max_connections=32)
        )
        if redis_url
        else None
    )
    tally, pacer = Tally(), Pacer()
    samples: list[Sample] = []
    audio = tone_source(float(plan.call_seconds))
    audio.frames(MediaFormat("PCMU", ("external", "internal")))  # encode before the clock starts
    checks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    end = asyncio.get_running_loop().time() + plan.seconds
    sampler = asyncio.create_task(sample_loop(plan, gateway, tally, samples, started))
    try:
        await asyncio.gather(
            *(
                run_slot(i, plan, pacer, audio, tally, redis_client, checks, end)
                for i in range(plan.sessions)
            )
        )
        await asyncio.gather(*checks)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        if redis_client is not None:
            await redis_client.aclose()
    return tally, samples, memory_verdict(samples, plan)


def report(tally: Tally, samples: Sequence[Sample], verdict: Verdict, checked: bool) -> str:
    cpu = [s.cpu_percent for s in samples]
    lines = [
        "",
        f"calls: started {tally.started}, finished {tally.finished}, ok {tally.ok}, "
        f"failed {tally.finished - tally.ok}",
    ]
    if tally.problems:
        lines.append("  failures: " + ", ".join(f"{k} {n}" for k, n in tally.problems.items()))
    if checked:
        lines.append(
            f"frames: sent {tally.frames_sent}, counted by the gateway {tally.frames_received}, "
            f"stored in Redis {tally.frames_stored}, reported lost {tally.frames_lost} "
            f"({tally.checked} calls checked, {tally.unchecked} without a closed entry)"
        )
        lines.extend(f"  short: {line}" for line in tally.short)
    else:
        lines.append(f"frames: sent {tally.frames_sent} (no --redis-url: storage not checked)")
    if cpu:
        lines.append(f"gateway CPU: mean {sum(cpu) / len(cpu):.1f} %, max {max(cpu):.1f} %")
    lines.append(verdict.text)
    return "\n".join(lines)


def passed(tally: Tally, verdict: Verdict, checked: bool) -> bool:
    lossless = not checked or (
        tally.unchecked == 0
        and tally.frames_lost == 0
        and tally.frames_stored == tally.frames_sent == tally.frames_received
    )
    return verdict.flat and lossless and tally.ok == tally.finished


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300, help="concurrent calls (300)")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (10)")
    parser.add_argument("--call-seconds", type=int, default=60, help="length of each call (60)")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="RSS/CPU sampling (5)")
    parser.add_argument(
        "--max-leak-bytes-per-call",
        type=int,
        default=1024,
        help="RSS growth per finished call after warm-up still called flat (1024)",
    )
    target = parser.add_argument_group("a running gateway (default: spawn one on loopback)")
    target.add_argument("--uri", help="ws:// URI of the gateway")
    target.add_argument("--api-key", help="API key of one of its integrations")
    target.add_argument("--client-secret", help="that integration's secret (base64)")
    target.add_argument("--redis-url", help="the gateway's Redis, to count stored frames")
    target.add_argument("--gateway-pid", type=int, help="the gateway's process id (RSS, CPU)")
    args = parser.parse_args()

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stack: SpawnedStack | None = None
    if args.uri is None:
        stack = SpawnedStack(Cores.plan(pin=True)).start()
        assert stack.gateway is not None
        uri, api_key, secret = stack.uri, BENCH_API_KEY, stack.client_secret
        redis_url: str | None = stack.redis_url
        gateway_pid: int = stack.gateway.pid
        print(f"spawned gateway pid {gateway_pid}; {stack.cores.describe()}; log {stack.log_path}")
    elif args.api_key is None or args.gateway_pid is None:
        raise SystemExit("soak: with --uri give --api-key and --gateway-pid too")
    else:
        uri, api_key, secret = args.uri, args.api_key, args.client_secret
        redis_url, gateway_pid = args.redis_url, args.gateway_pid
    plan = Plan(
        uri=uri,
        api_key=api_key,
        client_secret=secret,
        sessions=args.sessions,
        seconds=args.minutes * 60,
        call_seconds=args.call_seconds,
        sample_seconds=args.sample_seconds,
        max_leak_bytes_per_call=args.max_leak_bytes_per_call,
    )
    print(
        f"soak: {plan.sessions} calls of {plan.call_seconds} s (stereo PCMU, real time), "
        f"recycled for {args.minutes:g} min against {uri}; {os.cpu_count()} CPUs",
        flush=True,
    )
    try:
        tally, samples, verdict = asyncio.run(soak(plan, gateway_pid, redis_url))
    finally:
        if stack is not None:
            stack.stop()
    print(report(tally, samples, verdict, redis_url is not None))
    raise SystemExit(0 if passed(tally, verdict, redis_url is not None) else 1)


if __name__ == "__main__":
    main()
