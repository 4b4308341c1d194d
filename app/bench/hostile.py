"""`audiohook-gateway bench --hostile KIND`: good real-time calls while one attack runs.

    audiohook-gateway bench --spawn --hostile all --sessions 50 --attack-seconds 15
    audiohook-gateway bench --spawn --hostile overload --sessions 50 --overload-calls 3000

For each attack class (`all`: each in turn, against a fresh gateway with --spawn): --sessions
good calls (the bench's real-time signed calls) connect and stream; once all are live the
attack runs for --attack-seconds while new good calls keep arriving (--new-call-rate per
second, 2 s each). Reported per class: good calls that ended early, frames lost (sent vs in
Redis), open latency (connect -> `opened`) of the new good calls opened during the attack and
how many of them failed, gateway CPU and RSS during the attack, bytes the gateway wrote to its
log during the attack, and the attack's own counts. A table row per class, then one JSON line.

With --spawn the gateway keeps the production per-source upgrade limits (the attacks come from
another loopback address than the good calls); --gateway-setting overrides any setting.
`overload` is not an attack from outside: it ramps --overload-calls more good calls at
--start-rate per second, to about twice what the worker holds; new calls should then get fast
503s while the live ones keep their latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio

from app.bench import attacks
from app.bench.calls import Monitor, Target, _ingest_latencies, _mean, _mib, _ms, _pct
from app.bench.streams import ArrivalSampler, count_entries
from app.bench.wsload import FRAME_SECONDS, CallPlan, CallStats, FrameClock, run_call, silence_frame
from app.client.upgrade import Endpoint
from app.config import Settings
from app.redis import keys

KINDS = (*attacks.ATTACKS, "overload")
NEW_CALL_SECONDS = 2.0
LOG_KEEP_BYTES = 50 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    hostile = parser.add_argument_group("hostile (--hostile KIND)")
    hostile.add_argument(
        "--hostile",
        choices=(*KINDS, "all"),
        default=None,
        help="run good calls while this attack runs (all: each in turn, a fresh gateway each)",
    )
    hostile.add_argument("--attack-seconds", type=float, default=15.0)
    hostile.add_argument(
        "--attack-rate", type=float, default=None, help="attempts/s (failed-logins, junk-signature)"
    )
    hostile.add_argument(
        "--attack-connections",
        type=int,
        default=200,
        help="sockets (malformed-upgrade, idle-connections)",
    )
    hostile.add_argument(
        "--new-call-rate", type=float, default=2.0, help="new good calls/s during the attack"
    )
    hostile.add_argument(
        "--overload-calls", type=int, default=3000, help="extra calls ramped in (overload)"
    )


def production_limits() -> dict[str, str]:
    """The per-source upgrade limits a deployment runs with (the bench's spawn lifts them)."""
    defaults = Settings.model_fields
    return {
        "UPGRADES_PER_SECOND_PER_SOURCE": str(defaults["upgrades_per_second_per_source"].default),
        "UPGRADE_BURST_PER_SOURCE": str(defaults["upgrade_burst_per_source"].default),
    }


def _file_size(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return path.stat().st_size
    except OSError:
        return None


def _answer(stats: CallStats) -> str:
    """How a call went, in a few words: opened, refused_<status>, unauthorized, failed."""
    if stats.opened:
        return "opened"
    failure = stats.failure or ""
    if failure.startswith("upgrade refused: "):
        parts = failure.split(" ")
        return f"refused_{parts[3]}" if len(parts) > 3 else "refused"
    if "unauthorized" in failure:
        return "unauthorized"
    return "failed"


async def run_kind(
    kind: str, target: Target, args: argparse.Namespace, log_path: Path | None
) -> dict[str, Any]:
    endpoint = Endpoint.parse(target.uri)
    clock = FrameClock()
    clock.start()
    audio = silence_frame()
    sessions, start_rate = args.sessions, args.start_rate
    warmup = sessions / start_rate + 2.0
    total = warmup + args.attack_seconds + 2.0

    def plan(seconds: float, sampled: bool = False) -> CallPlan:
        frames = max(1, round(seconds / FRAME_SECONDS))
        return CallPlan(
            endpoint, target.api_key, target.client_secret, frames, record_send_times=sampled
        )

    def call(call_plan: CallPlan) -> asyncio.Task[CallStats]:
        return asyncio.create_task(run_call(call_plan, clock, audio, limit_seconds=total + 60))

    # The good calls, live before the attack starts; every frame's ingest latency is sampled.
    good_plans = [plan(total - index / start_rate, sampled=True) for index in range(sessions)]
    sampler = None
    if target.redis_url:
        sampler = ArrivalSampler(
            target.redis_url, [p.session_id for p in good_plans], target.cores.others
        )
        sampler.start()
    began = time.monotonic()
    good: list[asyncio.Task[CallStats]] = []
    for index, good_plan in enumerate(good_plans):
        await _sleep_until(began + index / start_rate)
        good.append(call(good_plan))
    await _sleep_until(began + warmup)

    monitor = Monitor(target.gateway_pid, target.redis_pid)
    log_before = _file_size(log_path)
    attack_counts: Counter[str] = Counter()
    attack_started = time.time()
    deadline = time.monotonic() + args.attack_seconds
    ramp: list[asyncio.Task[CallStats]] = []
    if kind == "overload":
        attack = asyncio.create_task(_overload(args, plan, call, ramp, deadline))
    else:
        attack_target = attacks.AttackTarget(endpoint, target.api_key, target.client_secret)
        options = attacks.AttackOptions(args.attack_rate, args.attack_connections)
        attack = asyncio.create_task(
            attacks.ATTACKS[kind](attack_target, deadline, options, attack_counts)
        )
    new: list[asyncio.Task[CallStats]] = []
    next_call = time.monotonic()
    next_sample = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_call and args.new_call_rate > 0:
            new.append(call(plan(NEW_CALL_SECONDS)))
            next_call += 1.0 / args.new_call_rate
        if now >= next_sample:
            monitor.sample(0)
            next_sample += 1.0
        await asyncio.sleep(min(0.05, max(0.0, deadline - now)))
    try:
        await asyncio.wait_for(attack, attacks.ANSWER_TIMEOUT + 5)
    except TimeoutError:
        attack_counts["not_finished"] += 1
    log_after = _file_size(log_path)
    good_stats = list(await asyncio.gather(*good))
    new_stats = list(await asyncio.gather(*new))
    ramp_stats = list(await asyncio.gather(*ramp))
    await clock.stop()
    arrivals = sampler.stop() if sampler else {}
    # The good calls' frames sent while the attack ran (send times are wall-clock), and in its
    # second half: the steady state of an attack that builds up (an overload ramp fills the
    # worker first, then every further call is refused).
    attack_ended = attack_started + args.attack_seconds
    ingest = _ingest_latencies(good_stats, arrivals, (attack_started, attack_ended))
    halfway = attack_started + args.attack_seconds / 2
    steady = _ingest_latencies(good_stats, arrivals, (halfway, attack_ended))
    if kind == "overload":
        attack_counts.update(_answer(s) for s in ramp_stats)

    live = [s for s in good_stats + new_stats + ramp_stats if s.opened]
    lost = None
    if target.redis_url:
        client = redis.asyncio.Redis.from_url(target.redis_url)
        try:
            ids = [s.session_id for s in live]
            counts = {c.session_id: c.audio_frames for c in await count_entries(client, ids)}
            lost = sum(s.frames_sent - counts.get(s.session_id, 0) for s in live)
            for start in range(0, len(ids), 500):
                await client.unlink(*(keys.audio_stream(i) for i in ids[start : start + 500]))
        finally:
            await client.aclose()
    open_times = [
        s.upgrade_seconds + s.open_seconds
        for s in new_stats
        if s.upgrade_seconds is not None and s.open_seconds is not None
    ]
    ended_early = [s for s in good_stats if s.failure is not None or not s.closed]
    ended_early += [s for s in ramp_stats if s.opened and (s.failure is not None or not s.closed)]
    new_failed = [s for s in new_stats if s.failure is not None or not s.closed]
    samples = monitor.samples
    return {
        "kind": kind,
        "good_calls": sessions,
        "good_calls_ended_early": len(ended_early),
        "frames_sent": sum(s.frames_sent for s in live),
        "frames_lost": lost,
        "good_ingest_samples": len(ingest),
        "good_ingest_ms_p50": _ms(_pct(ingest, 0.5)),
        "good_ingest_ms_p99": _ms(_pct(ingest, 0.99)),
        "good_steady_ingest_ms_p99": _ms(_pct(steady, 0.99)),
        "new_calls": len(new_stats),
        "new_calls_failed": len(new_failed),
        "new_call_answers": dict(Counter(_answer(s) for s in new_stats)),
        "new_open_ms_p50": _ms(_pct(open_times, 0.5)),
        "new_open_ms_p99": _ms(_pct(open_times, 0.99)),
        "gateway_cpu_pct": _mean([m.gateway_cpu for m in samples]),
        "gateway_cpu_pct_max": max((m.gateway_cpu or 0.0 for m in samples), default=None),
        "gateway_rss_mib_peak": _mib(max((m.gateway_rss or 0 for m in samples), default=None)),
        "log_bytes": None if log_before is None or log_after is None else log_after - log_before,
        "attack_seconds": args.attack_seconds,
        "attack": dict(sorted(attack_counts.items())),
        "failures": sorted({s.failure or "not closed" for s in ended_early + new_failed})[:5],
    }


async def _overload(
    args: argparse.Namespace,
    plan: Callable[[float], CallPlan],
    call: Callable[[CallPlan], asyncio.Task[CallStats]],
    ramp: list[asyncio.Task[CallStats]],
    deadline: float,
) -> None:
    """More good calls at --start-rate/s until --overload-calls or the deadline."""
    began = time.monotonic()
    for index in range(args.overload_calls):
        due = began + index / args.start_rate
        if due >= deadline:
            return
        await _sleep_until(due)
        ramp.append(call(plan(deadline - time.monotonic() + 2.0)))


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


_COLUMNS = (
    ("attack", "kind", 18),
    ("ended early", "good_calls_ended_early", 12),
    ("frames lost", "frames_lost", 12),
    ("ingest p99 ms", "good_ingest_ms_p99", 14),
    ("2nd half p99", "good_steady_ingest_ms_p99", 13),
    ("new open p99 ms", "new_open_ms_p99", 16),
    ("new failed", "new_calls_failed", 11),
    ("CPU %", "gateway_cpu_pct", 8),
    ("RSS MiB", "gateway_rss_mib_peak", 9),
    ("log bytes", "log_bytes", 12),
)


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["".join(f"{title:<{width}}" for title, _, width in _COLUMNS)]
    for row in rows:
        lines.append("".join(f"{row[key]!s:<{width}}" for _, key, width in _COLUMNS))
        lines.append(f"  attack counts: {json.dumps(row['attack'])}")
    return "\n".join(lines)


def kinds(choice: str) -> list[str]:
    return list(KINDS) if choice == "all" else [choice]


def run(args: argparse.Namespace) -> int:
    """Each chosen class in turn (a fresh gateway for each with --spawn); 0 unless a class
    could not run."""
    from app.bench.calls import _target, raise_open_files_limit
    from app.bench.spawn import Cores, SpawnedStack

    raise_open_files_limit()
    cores = Cores.plan(pin=args.spawn and not args.no_pin)
    settings = production_limits() | dict(item.split("=", 1) for item in args.gateway_setting)
    rows: list[dict[str, Any]] = []
    for kind in kinds(args.hostile):
        stack = (
            SpawnedStack(cores, settings, python=args.gateway_python).start()
            if args.spawn
            else None
        )
        try:
            target = _target(args, stack, cores)
            log_path = stack.log_path if stack is not None else None
            print(f"{kind}: {args.sessions} good calls, attack {args.attack_seconds:g} s; "
                  f"{cores.describe()}", flush=True)  # fmt: skip
            rows.append(_run_async(run_kind(kind, target, args, log_path)))
        finally:
            if stack is not None:
                stack.stop()
                _drop_large_log(stack.log_path)
        print(format_rows(rows[-1:]), flush=True)
    print()
    print(format_rows(rows))
    print(json.dumps({"hostile": rows}))
    return 0


def _drop_large_log(path: Path) -> None:
    """A flood can write gigabytes of log: keep the spawned gateway's log only when small."""
    size = _file_size(path) or 0
    if size > LOG_KEEP_BYTES:
        path.unlink(missing_ok=True)
        print(f"gateway log ({size} bytes) deleted", flush=True)
    else:
        print(f"gateway log: {path}", flush=True)


def _run_async(coroutine: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)
