"""`audiohook-gateway bench`: concurrent real-time calls against a gateway, measured end to end.

    audiohook-gateway bench --spawn --sessions 2000 --seconds 60
    audiohook-gateway bench --spawn --ramp --sessions 500 --ramp-step 250 --seconds 40
    audiohook-gateway bench --spawn --rate 100 --seconds 20 --call-seconds 2
    audiohook-gateway bench --uri ws://127.0.0.1:8080/api/v1/audiohook/ws --api-key K \\
        --client-secret S --redis-url redis://127.0.0.1:6379/0 --gateway-pid 1234

N calls (stereo PCMU, 200 ms frames, real time, signed like Genesys) start at --start-rate
per second and each streams --seconds of audio, then closes. Reported: sessions opened and
failed; upgrade and `open`->`opened` latency; frames sent vs audio entries found in Redis
(loss); ingest latency client send -> entry readable in Redis (see app/bench/streams.py);
gateway CPU and RSS while all calls stream, memory per session; the load generator's own CPU
and timer lag; where the ingest latency goes (app/bench/attribution.py: the gateway's own
receipt-to-ack share within 10 and 20 ms, from its metrics, and how long Redis waited for a
core). Printed as a table and one JSON line (the last line of output).

--spawn starts a gateway (one worker) and a Redis server of its own on loopback, pinned:
gateway on CPU 0, everything else on the other CPUs. --ramp raises N by --ramp-step until a
step fails (any failed session, any loss, or p99 ingest latency with all calls live above
--max-p99-ms) and reports the largest N that held. That p99 covers the frames sent while every
call streams and no upgrades happen; the p99 over all frames, which includes the connection
phase at --start-rate upgrades/s, is printed beside it, and the connection phase itself as
upgrade and open latency. --rate R opens R new sessions per second for --seconds,
each lasting --call-seconds: the connection-rate test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio

from app.bench.attribution import PublishLatencyWindow, run_queue_wait_seconds
from app.bench.spawn import BENCH_API_KEY, Cores, SpawnedStack
from app.bench.streams import Arrivals, ArrivalSampler, StreamCount, count_entries
from app.bench.wsload import (
    FRAME_SECONDS,
    Call,
    CallPlan,
    CallStats,
    FrameClock,
    run_call,
    silence_frame,
)
from app.client.upgrade import Endpoint
from app.redis import keys

_SAMPLE_SEED = 1  # which calls are sampled: the same in every run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("target (or --spawn)")
    target.add_argument(
        "--spawn",
        action="store_true",
        help="start a gateway (one worker) and Redis of its own on loopback",
    )
    target.add_argument("--uri", help="ws:// URI of a running gateway")
    target.add_argument("--api-key", help="API key of an integration on that gateway")
    target.add_argument("--client-secret", help="its client secret (base64); omit: unsigned")
    target.add_argument("--redis-url", help="the gateway's Redis (for loss and latency)")
    target.add_argument("--gateway-pid", type=int, help="gateway process id (CPU and RSS)")
    target.add_argument("--redis-pid", type=int, help="Redis process id (CPU)")
    target.add_argument(
        "--metrics-url", help="the gateway's metrics listener, e.g. http://127.0.0.1:9090"
    )
    target.add_argument(
        "--gateway-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --spawn: an AUDIOHOOK_<NAME> setting for the gateway",
    )
    target.add_argument(
        "--no-pin", action="store_true", help="with --spawn: do not pin processes to cores"
    )
    target.add_argument(
        "--gateway-python",
        metavar="PATH",
        help="with --spawn: run the gateway with this interpreter, i.e. the `app` installed in "
        "its environment (another checkout's .venv/bin/python benches that commit)",
    )
    load = parser.add_argument_group("load")
    load.add_argument("--sessions", type=int, default=100, help="concurrent calls (ramp: first)")
    load.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="audio each call streams (--rate: how long new calls keep coming)",
    )
    load.add_argument(
        "--start-rate",
        type=float,
        default=200.0,
        help="calls started per second (staggered starts)",
    )
    load.add_argument(
        "--sample-sessions",
        type=int,
        default=100,
        help="calls whose every frame's ingest latency is measured",
    )
    load.add_argument("--ramp", action="store_true", help="find the largest N that holds")
    load.add_argument("--ramp-step", type=int, default=250)
    load.add_argument("--ramp-max", type=int, default=5000)
    load.add_argument(
        "--max-p99-ms",
        type=float,
        default=20.0,
        help="p99 ingest latency (all calls live) a step must hold",
    )
    load.add_argument(
        "--rate", type=float, default=None, help="connection-rate mode: new sessions per second"
    )
    load.add_argument(
        "--call-seconds", type=float, default=2.0, help="connection-rate mode: audio per call"
    )
    load.add_argument(
        "--keep-streams",
        action="store_true",
        help="leave the calls' streams in Redis (default: deleted after counting)",
    )


@dataclass(frozen=True, slots=True)
class Target:
    uri: str
    api_key: str
    client_secret: str | None
    redis_url: str | None
    gateway_pid: int | None
    redis_pid: int | None
    cores: Cores
    metrics_url: str | None = None


@dataclass
class Sample:
    """One second of resource use (psutil), with how many calls were streaming."""

    streaming: int
    gateway_cpu: float | None
    gateway_rss: int | None
    redis_cpu: float | None
    redis_wait: float | None  # seconds Redis waited for a core, per second
    generator_cpu: float


@dataclass
class Monitor:
    gateway_pid: int | None
    redis_pid: int | None
    samples: list[Sample] = field(default_factory=list)
    _redis_waited: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        import psutil  # a dev dependency: the bench is a development tool

        self._gateway = psutil.Process(self.gateway_pid) if self.gateway_pid else None
        self._redis = psutil.Process(self.redis_pid) if self.redis_pid else None
        self._self = psutil.Process()
        for process in (self._gateway, self._redis, self._self):
            if process is not None:
                process.cpu_percent(None)
        self._redis_waited = run_queue_wait_seconds(self.redis_pid) if self.redis_pid else None

    def rss(self) -> int | None:
        return self._gateway.memory_info().rss if self._gateway else None

    def sample(self, streaming: int) -> None:
        """Called once a second."""
        waited = run_queue_wait_seconds(self.redis_pid) if self.redis_pid else None
        redis_wait = (
            waited - self._redis_waited
            if waited is not None and self._redis_waited is not None
            else None
        )
        self._redis_waited = waited
        self.samples.append(
            Sample(
                streaming,
                self._gateway.cpu_percent(None) if self._gateway else None,
                self.rss(),
                self._redis.cpu_percent(None) if self._redis else None,
                redis_wait,
                self._self.cpu_percent(None),
            )
        )


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 1) if present else None


def sampled_calls(sessions: int, sample_sessions: int) -> set[int]:
    """Which calls (by start order) the latency sampler follows: a random sample, the same in
    every run. Not every k-th call: calls start at a steady rate, so every k-th one sends in
    the same few slots of the frame clock (at 200 calls/s, every 20th call in 2 of its 20),
    and the latency measured would be those slots' alone."""
    pick = random.Random(_SAMPLE_SEED)  # noqa: S311 - a sample of calls, not a secret
    chosen = pick.sample(range(sessions), min(sessions, sample_sessions))
    return set(chosen)


async def run_load(
    target: Target, sessions: int, seconds: float, start_rate: float, sample_sessions: int,
    keep_streams: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One load step: start `sessions` calls at `start_rate`/s, each streaming `seconds`."""
    endpoint = Endpoint.parse(target.uri)
    frames = max(1, round(seconds / FRAME_SECONDS))
    followed = sampled_calls(sessions, sample_sessions)
    plans = [
        CallPlan(
            endpoint, target.api_key, target.client_secret, frames,
            record_send_times=index in followed,
        )
        for index in range(sessions)
    ]  # fmt: skip
    sampled = [plan.session_id for plan in plans if plan.record_send_times]
    sampler = None
    if target.redis_url and sampled:
        sampler = ArrivalSampler(target.redis_url, sampled, target.cores.others)
        sampler.start()
    monitor = Monitor(target.gateway_pid, target.redis_pid)
    rss_before = monitor.rss()
    clock = FrameClock()
    clock.start()
    calls: list[Call] = []
    timeout = seconds + sessions / start_rate + 60
    publish_window = PublishLatencyWindow(target.metrics_url) if target.metrics_url else None

    async def watch() -> None:
        while True:
            await asyncio.sleep(1.0)
            streaming = sum(1 for c in calls if c.stats.opened and not c.stats.finished_at
                            and c.stats.frames_sent < c.plan.frames)  # fmt: skip
            monitor.sample(streaming)
            if publish_window is None or publish_window.ended:
                continue
            # Every call that will stream is streaming: all started, none still connecting
            # (refused calls, e.g. shed with 503, do not hold the window back).
            refused = sum(1 for c in calls if c.stats.failure is not None and not c.stats.opened)
            all_live = len(calls) == sessions and streaming > 0 and streaming + refused >= sessions
            if not publish_window.started and all_live:
                await publish_window.start()
            elif publish_window.started and not all_live:
                await publish_window.end()

    watcher = asyncio.create_task(watch())
    audio = silence_frame()
    tasks = []
    started = time.perf_counter()
    for index, plan in enumerate(plans):
        delay = started + index / start_rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(
            run_call(plan, clock, audio, limit_seconds=timeout, on_created=calls.append)
        ))  # fmt: skip
    stats: list[CallStats] = list(await asyncio.gather(*tasks))
    watcher.cancel()
    if publish_window is not None and publish_window.started and not publish_window.ended:
        await publish_window.end()  # every call ended within one sample
    await clock.stop()
    arrivals: Arrivals = sampler.stop() if sampler else {}
    counts: list[StreamCount] = []
    if target.redis_url:
        client = redis.asyncio.Redis.from_url(target.redis_url)
        try:
            opened_ids = [s.session_id for s in stats if s.opened]
            counts = await count_entries(client, opened_ids)
            if not keep_streams:
                for start in range(0, len(opened_ids), 500):
                    chunk = opened_ids[start : start + 500]
                    await client.unlink(*(keys.audio_stream(s) for s in chunk))
        finally:
            await client.aclose()
    return _report(sessions, seconds, start_rate, stats, counts, arrivals, monitor,
                   rss_before, clock, publish_window)  # fmt: skip


def _ingest_latencies(
    stats: Sequence[CallStats], arrivals: Arrivals, window: tuple[float, float] | None = None
) -> list[float]:
    """Send -> readable in Redis, per sampled frame; `window`: only frames sent within it."""
    latencies: list[float] = []
    for stat in stats:
        found = arrivals.get(stat.session_id)
        if not found or stat.send_times is None:
            continue
        for entry, arrived in found:
            frame = entry - 2  # entry 1 is `opened`; frame k (0-based) is entry k + 2
            if 0 <= frame < len(stat.send_times):
                sent = stat.send_times[frame]
                if window is None or window[0] <= sent <= window[1]:
                    latencies.append(arrived - sent)
    return latencies


def _report(
    sessions: int, seconds: float, start_rate: float, stats: Sequence[CallStats],
    counts: Sequence[StreamCount], arrivals: Arrivals, monitor: Monitor,
    rss_before: int | None, clock: FrameClock, publish_window: PublishLatencyWindow | None,
) -> dict[str, Any]:  # fmt: skip
    opened = [s for s in stats if s.opened]
    failed = [s for s in stats if s.failure is not None or not s.closed]
    open_times = [s.open_seconds for s in opened if s.open_seconds is not None]
    upgrade_times = [s.upgrade_seconds for s in stats if s.upgrade_seconds is not None]
    latencies = _ingest_latencies(stats, arrivals)
    # Steady state: from one second after the last call's first frame to the first call's
    # last frame (no upgrades then, every call streaming).
    firsts = [s.send_times[0] for s in stats if s.send_times]
    lasts = [s.send_times[-1] for s in stats if s.send_times]
    steady = (
        _ingest_latencies(stats, arrivals, (max(firsts) + 1.0, min(lasts)))
        if firsts and lasts
        else []
    )
    sent = sum(s.frames_sent for s in opened)
    found = sum(c.audio_frames for c in counts)
    by_id = {c.session_id: c for c in counts}
    short = sum(1 for s in opened if s.session_id not in by_id
                or by_id[s.session_id].audio_frames != s.frames_sent)  # fmt: skip
    full = [m for m in monitor.samples if m.streaming >= sessions] or [
        m for m in monitor.samples if m.streaming > 0
    ]
    peak_rss = max((m.gateway_rss for m in full if m.gateway_rss), default=None)
    gateway_cpu = _mean([m.gateway_cpu for m in full])
    report: dict[str, Any] = {
        "sessions": sessions,
        "seconds": seconds,
        "start_rate": start_rate,
        "opened": len(opened),
        "failed": len(failed),
        "failures": sorted({s.failure or "not closed" for s in failed})[:5],
        "upgrade_ms_p50": _ms(_pct(upgrade_times, 0.5)),
        "upgrade_ms_p99": _ms(_pct(upgrade_times, 0.99)),
        "open_ms_p50": _ms(_pct(open_times, 0.5)),
        "open_ms_p99": _ms(_pct(open_times, 0.99)),
        "frames_sent": sent,
        "frames_in_redis": found if counts else None,
        "frames_lost": sent - found if counts else None,
        "sessions_short": short if counts else None,
        "gateway_frames_lost": sum(c.frames_lost or 0 for c in counts) if counts else None,
        "trimmed_streams": sum(1 for c in counts if c.last_entry != c.entries),
        "ingest_samples": len(latencies),
        "ingest_ms_p50": _ms(_pct(latencies, 0.5)),
        "ingest_ms_p99": _ms(_pct(latencies, 0.99)),
        "ingest_ms_max": _ms(max(latencies, default=None)),
        "steady_ingest_samples": len(steady),
        "steady_ingest_ms_p50": _ms(_pct(steady, 0.5)),
        "steady_ingest_ms_p99": _ms(_pct(steady, 0.99)),
        "steady_ingest_ms_max": _ms(max(steady, default=None)),
        "full_load_seconds": len(full),
        "gateway_cpu_pct": gateway_cpu,
        "gateway_cpu_pct_per_1000_calls": (
            round(gateway_cpu * 1000 / sessions, 1) if gateway_cpu is not None else None
        ),
        "gateway_rss_mib_before": _mib(rss_before),
        "gateway_rss_mib_peak": _mib(peak_rss),
        "rss_kib_per_session": (
            round((peak_rss - rss_before) / 1024 / sessions, 1) if peak_rss and rss_before else None
        ),
        "redis_cpu_pct": _mean([m.redis_cpu for m in full]),
        "redis_cpu_wait_pct": _mean([m.redis_wait * 100 for m in full if m.redis_wait is not None]),
        "gateway_ack_within_10ms_pct": publish_window and publish_window.share_within(0.01),
        "gateway_ack_within_20ms_pct": publish_window and publish_window.share_within(0.02),
        "generator_cpu_pct": _mean([m.generator_cpu for m in full]),
        "generator_lag_ms_p99": _ms(_pct(clock.lags, 0.99)),
        "generator_lag_ms_max": _ms(clock.max_lag),
    }
    report["gateway_cpu_per_generator_cpu"] = _ratio(gateway_cpu, report["generator_cpu_pct"])
    return report


def _ratio(gateway_cpu: float | None, generator_cpu: float | None) -> float | None:
    """The gateway's CPU in units of the load generator's. The generator does the same work
    in every run of the same calls, so its CPU follows the machine's speed at the time (on a
    shared VM it moves by a fifth within the hour): versions compared by this ratio, run by
    run, are compared with that movement taken out."""
    if gateway_cpu is None or not generator_cpu:
        return None
    return round(gateway_cpu / generator_cpu, 3)


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 1048576, 1)


def passed(report: dict[str, Any], max_p99_ms: float) -> bool:
    """No failed session, no loss, and p99 ingest latency with all calls live within bounds."""
    p99 = report["steady_ingest_ms_p99"]
    return (
        report["failed"] == 0
        and report["frames_lost"] == 0
        and report["sessions_short"] == 0
        and p99 is not None
        and p99 <= max_p99_ms
    )


_ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("sessions opened / failed", lambda r: f"{r['opened']} / {r['failed']}"),
    ("upgrade p50 / p99 (ms)", lambda r: f"{r['upgrade_ms_p50']} / {r['upgrade_ms_p99']}"),
    ("open->opened p50 / p99 (ms)", lambda r: f"{r['open_ms_p50']} / {r['open_ms_p99']}"),
    ("frames sent / in Redis / lost",
     lambda r: f"{r['frames_sent']} / {r['frames_in_redis']} / {r['frames_lost']}"),
    ("ingest p50 / p99 / max (ms)",
     lambda r: f"{r['ingest_ms_p50']} / {r['ingest_ms_p99']} / {r['ingest_ms_max']}"
               f"  ({r['ingest_samples']} frames)"),
    ("  all calls live: p50 / p99 / max",
     lambda r: f"{r['steady_ingest_ms_p50']} / {r['steady_ingest_ms_p99']} / "
               f"{r['steady_ingest_ms_max']}  ({r['steady_ingest_samples']} frames)"),
    ("gateway CPU % (all calls live)",
     lambda r: f"{r['gateway_cpu_pct']}  ({r['full_load_seconds']} s sampled)"),
    ("gateway RSS before / peak (MiB)",
     lambda r: f"{r['gateway_rss_mib_before']} / {r['gateway_rss_mib_peak']}"),
    ("RSS per session (KiB)", lambda r: f"{r['rss_kib_per_session']}"),
    ("gateway receipt->Redis ack <= 10 / 20 ms (%)",
     lambda r: f"{r['gateway_ack_within_10ms_pct']} / {r['gateway_ack_within_20ms_pct']}"
               "  (all calls live)"),
    ("Redis CPU % / waiting for a core %",
     lambda r: f"{r['redis_cpu_pct']} / {r['redis_cpu_wait_pct']}"),
    ("load generator CPU % / lag p99 (ms)",
     lambda r: f"{r['generator_cpu_pct']} / {r['generator_lag_ms_p99']}"),
    ("gateway CPU / load generator CPU",
     lambda r: f"{r['gateway_cpu_per_generator_cpu']}  (the machine's speed taken out)"),
]  # fmt: skip


def format_table(report: dict[str, Any]) -> str:
    title = f"{report['sessions']} calls x {report['seconds']:g} s"
    lines = [title, "-" * len(title)]
    lines += [f"{name:<38} {row(report)}" for name, row in _ROWS]
    if report["failures"]:
        lines.append(f"{'failures (first kinds)':<38} {'; '.join(report['failures'])}")
    return "\n".join(lines)


async def _main(args: argparse.Namespace, target: Target) -> list[dict[str, Any]]:
    if args.rate is not None:
        sessions = max(1, round(args.rate * args.seconds))
        report = await run_load(target, sessions, args.call_seconds, args.rate,
                                args.sample_sessions, args.keep_streams)  # fmt: skip
        report["mode"] = "rate"
        print(format_table(report), flush=True)
        return [report]
    steps: list[dict[str, Any]] = []
    sessions = args.sessions
    while True:
        report = await run_load(target, sessions, args.seconds, args.start_rate,
                                args.sample_sessions, args.keep_streams)  # fmt: skip
        report["mode"] = "ramp" if args.ramp else "load"
        report["passed"] = passed(report, args.max_p99_ms)
        steps.append(report)
        print(format_table(report) + f"\n{'holds (no loss, live p99 ok)':<38} {report['passed']}\n",
              flush=True)  # fmt: skip
        if not args.ramp or not report["passed"] or sessions + args.ramp_step > args.ramp_max:
            return steps
        sessions += args.ramp_step
        await asyncio.sleep(2.0)  # let the gateway retire the last step's sessions


def _target(args: argparse.Namespace, stack: SpawnedStack | None, cores: Cores) -> Target:
    if stack is not None:
        assert stack.gateway is not None
        assert stack.redis is not None
        return Target(stack.uri, BENCH_API_KEY, stack.client_secret, stack.redis_url,
                      stack.gateway.pid, stack.redis.pid, cores,
                      f"http://127.0.0.1:{stack.metrics_port}")  # fmt: skip
    if not args.uri or not args.api_key:
        raise SystemExit("bench: give --spawn, or --uri and --api-key of a running gateway")
    return Target(args.uri, args.api_key, args.client_secret, args.redis_url,
                  args.gateway_pid, args.redis_pid, cores, args.metrics_url)  # fmt: skip


def raise_open_files_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(args: argparse.Namespace) -> int:
    if getattr(args, "hostile", None):  # `bench --hostile KIND`: app/bench/hostile.py
        from app.bench import hostile

        return hostile.run(args)
    raise_open_files_limit()
    cores = Cores.plan(pin=args.spawn and not args.no_pin)
    settings = dict(item.split("=", 1) for item in args.gateway_setting)
    stack = (
        SpawnedStack(cores, settings, python=args.gateway_python).start() if args.spawn else None
    )
    try:
        target = _target(args, stack, cores)
        print(f"cores: {os.cpu_count()}; {cores.describe()}", flush=True)
        if stack is not None:
            print(f"gateway pid {target.gateway_pid}, log {stack.log_path}", flush=True)
        steps = _run_loop(args, target)
    finally:
        if stack is not None:
            stack.stop()
    summary: dict[str, Any] = {"cores": cores.describe(), "steps": steps}
    if args.ramp:
        held = [s["sessions"] for s in steps if s["passed"]]
        summary["max_sessions_held"] = max(held, default=0)
        print(f"largest N holding zero loss and live p99 ingest <= {args.max_p99_ms:g} ms: "
              f"{summary['max_sessions_held']}")  # fmt: skip
    print(json.dumps(summary))
    if args.ramp:
        return 0 if summary["max_sessions_held"] else 1
    return 0 if all(s["failed"] == 0 and s["frames_lost"] in (0, None) for s in steps) else 1


def _run_loop(args: argparse.Namespace, target: Target) -> list[dict[str, Any]]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(_main(args, target))
    if sys.version_info >= (3, 12):  # pragma: no cover
        return asyncio.run(_main(args, target), loop_factory=uvloop.new_event_loop)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_main(args, target))
