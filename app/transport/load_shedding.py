"""Load shedding: while the worker cannot keep up, new upgrades are refused at once (HTTP 503
with `Retry-After`), so the client tries another replica and the calls already live keep
their latency. Without it, an overloaded worker queues upgrades until their signatures
expire and answers them `unauthorized`, and every live call's audio waits in the same queue.

An upgrade is shed when any of six cheap signals says the worker is behind:

- event-loop lag: a monitor task sleeps a short interval and measures how late it wakes
  (smoothed). Every callback waits that long, the live calls' audio frames included.
- CPU: the share of the CPU the worker may use (one core, or its container's CPU limit when
  lower: ``app/cpu_limit.py``) that the process used, smoothed over about a second. Lag
  only grows once the core is saturated, when every queue is already filling; refusing new
  calls just below saturation keeps the headroom the live calls' latency needs. The CPU
  that accepted calls' own handshakes took (``HandshakeCpu``) is left out: it ends with the
  call ramp that brought it, while the calls stay; a ramp that a slower core absorbs would
  otherwise be refused at its peak, with the calls' own share far below the bound. The
  whole process's share still sheds at ``SATURATED_CPU`` (or the bound, if higher), and
  refused upgrades and failed logins always count. Under a limit whose stall is long
  (``app/cpu_limit.py``) everything counts and the bound is lower: a worker that spends its
  quota early in a period is stopped for the rest of it, and every live call's audio waits
  that long. There the smoothed share shows an admitted call about a second late, and a
  second's arrivals admitted at the bound's edge overrun the quota: so each monitor
  interval's authenticated upgrades may take only the CPU the calls leave under the bound
  for that interval (``HandshakeBudget``; refused as ``cpu_headroom``), once the share is
  past half its bound: a replica's first calls, arriving together, still pass.
- CPU throttled: under a limit, the kernel's own count of the periods in which it stopped the
  worker (``ThrottledPeriods`` in ``app/cpu_limit.py``). The smoothed CPU share follows a
  call ramp about a second late, and a ramp's upgrades are the costliest work there is; a
  throttled period is the harm itself, seen within the monitor's interval. New upgrades are
  refused for a hold time after each one, once the smoothed CPU share is past half its bound:
  a short burst of calls (a replica's first ones) is throttled too, and it passes. A limit
  whose stall is short (``SHORT_STALL_SECONDS``) is not counted, and a CPU bound of 0 turns
  this signal off with the other.
- handshakes in flight: upgrades between the start of admission and its answer (signature
  check, nonce claim in Redis). A pile-up means the loop or Redis is not keeping up.
- Redis round trip: how long Redis takes to answer the worker's writes (the slowest round
  trip of each interval, or the age of one still out; smoothed). Redis that still answers but
  cannot keep up (its core saturated, other replicas writing to it) makes every live call's
  audio wait while this worker's own CPU and loop look fine; readiness only turns when Redis
  stops answering.
- handshake age: time from the TCP connection to admission. An upgrade that already waited
  this long in the worker's queues is refused rather than served late. Time spent in the
  kernel's accept queue is invisible to the worker, so the age by the request's own
  signature (`created` in Signature-Input) counts too, beyond the tolerated clock skew:
  in a bench at about twice capacity, upgrades queued outside the worker until their
  signatures expired while the in-worker age stayed small. That age is the client's word,
  so it counts only while the worker shows strain (a quarter of the lag or handshake
  bound): a caller whose clock runs behind is never refused by a gateway at ease.

Each bound set to 0 disables its signal. The decision is independent of the server: the
connection's start time and its ``HandshakeCpu`` reach admission in the ASGI scope's
``state`` (see ``app/transport/http_guard.py``); without them the age signal is not used,
and an upgrade's count starts at the endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from app.config import Settings
from app.observability import metrics
from app.observability.logging import ThrottledLog

log = logging.getLogger("app.transport.load_shedding")

# What a refused upgrade is told: try again (another replica) after this many seconds.
RETRY_AFTER_SECONDS: Final = 1
OVERLOADED_TEXT: Final = "Overloaded, retry later"
# Key of the TCP connection's time.monotonic() in the ASGI scope's "state".
CONNECTED_AT: Final = "audiohook_connected_at"
MONITOR_INTERVAL_SECONDS: Final = 0.05
# Weight of the newest lag sample: a lone 100 ms pause (a full garbage collection) moves the
# smoothed lag by 30 ms; a loop that stays 100 ms late crosses 90 ms within six samples.
LAG_SMOOTHING: Final = 0.3
LOG_LINES_PER_SECOND: Final = 1.0
# Share of the lag or handshake bound from which the signed age counts as well.
STRAIN_FRACTION: Final = 0.25

# Weight of the newest CPU sample (one per monitor interval): a time constant of about 1 s.
CPU_SMOOTHING: Final = 0.05
# Share of the CPU bound from which the worker is near it: a throttled period sheds, and under
# a limit whose stall is long upgrades take only the headroom. Below it a replica's first
# calls, arriving together, are let in (throttled, maybe, and it passes).
NEAR_BOUND_CPU_FRACTION: Final = 0.5
# The whole process's share (accepted handshakes included) at which the CPU signal sheds
# whatever the calls' own share: the core is all but spent.
SATURATED_CPU: Final = 0.98
# Key of the upgrade's HandshakeCpu in the ASGI scope's "state".
HANDSHAKE_CPU: Final = "audiohook_handshake_cpu"
# Weight of the newest accepted handshake's CPU in what the next upgrade is charged.
HANDSHAKE_COST_SMOOTHING: Final = 0.1
# What an authenticated upgrade is charged before any handshake has been measured.
FIRST_HANDSHAKE_COST_SECONDS: Final = 0.002

LAG, CPU, HEADROOM, THROTTLED, REDIS_ROUND_TRIP, IN_FLIGHT, AGE = (
    "event_loop_lag",
    "cpu_utilization",
    "cpu_headroom",
    "cpu_throttled",
    "redis_round_trip",
    "handshakes_in_flight",
    "handshake_age",
)
_CREATED = re.compile(rb";\s*created=(\d{1,12})")


def signature_created(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    """`created` of the first signature in the Signature-Input header, if any (not verified:
    only used to tell how long the request has been on its way)."""
    for name, value in headers:
        if name == b"signature-input":
            found = _CREATED.search(value)
            return int(found.group(1)) if found else None
    return None


class HandshakeCpu:
    """CPU time the worker spent on one upgrade, counted in the stretches of code that run for
    it alone (`start` to `stop`, a thread CPU clock): the HTTP guard's connect and request
    head, the WebSocket handshake, admission up to and after the claim's Redis round trip,
    and the accept. Not counted (so still in the calls' share): accepting the socket, the
    task that runs the endpoint up to its first line, the Redis reply and the `open`."""

    __slots__ = ("_started", "charged", "seconds")

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started: float | None = None
        self.charged = 0.0  # CPU seconds charged to the headroom (handshake_authenticated)

    def start(self) -> None:
        self._started = time.thread_time()

    def stop(self) -> None:
        if self._started is not None:
            self.seconds += time.thread_time() - self._started
            self._started = None


class HandshakeBudget:
    """The CPU that authenticated upgrades may still take in this monitor interval, under a
    limit whose stall is long, near the CPU bound. Each interval brings the room the calls'
    own share leaves under the bound for that interval (accepted handshakes are not in that
    share: they are what the room pays for; a debt, at most one upgrade's charge, is paid
    from it first, and no more than one interval's room is saved up); each upgrade whose
    signature checks out is charged what accepted handshakes have cost lately, and given the
    charge back if it is refused after all (a replayed nonce, a limit): a client without
    credentials spends none of it. The smoothed share would show those calls only about a
    second later."""

    __slots__ = ("cost", "room", "seconds")

    def __init__(self, room: float) -> None:
        self.seconds = self.room = room
        self.cost = FIRST_HANDSHAKE_COST_SECONDS

    def refill(self, room: float) -> None:
        self.room = room
        self.seconds = min(self.seconds + room, room)

    def spend(self) -> float:
        """Charge one upgrade; what it was charged."""
        self.seconds -= self.cost
        return self.cost

    def refund(self, charged: float) -> None:
        """Give a charge back: up to this interval's room, not beyond (a charge made in an
        earlier interval, whose room has been refilled since, is not saved up twice)."""
        self.seconds = min(self.seconds + charged, self.room)

    def measured(self, seconds: float) -> None:
        """An accepted handshake's own CPU: what the next ones are charged follows it."""
        self.cost += HANDSHAKE_COST_SMOOTHING * (seconds - self.cost)


class LoadShedder:
    """Decides whether one more upgrade may start; one per worker process."""

    def __init__(
        self,
        max_lag_seconds: float,
        max_handshakes: int,
        max_age_seconds: float,
        clock_skew_seconds: float = 0.0,
        interval: float = MONITOR_INTERVAL_SECONDS,
        max_cpu: float = 0.0,
        max_redis_round_trip_seconds: float = 0.0,
        redis_round_trip: Callable[[], float] | None = None,
        cpu_capacity: float = 1.0,
        max_cpu_under_limit: float | None = None,
        throttle_hold_seconds: float = 0.0,
        throttled_periods: Callable[[], int | None] | None = None,
        long_stall: bool = True,
    ) -> None:
        self.max_lag_seconds = max_lag_seconds
        # The CPU bound for a worker with a whole core, and for one held to less (default: the
        # same): one that spends a period's quota is stopped for the rest of the period.
        self._max_cpu_whole_core = max_cpu
        self._max_cpu_under_limit = max_cpu if max_cpu_under_limit is None else max_cpu_under_limit
        self.cpu = 0.0  # smoothed share of the capacity used by this process
        self.calls_cpu = 0.0  # the same, less accepted calls' handshakes
        self._accepted_handshakes_cpu = 0.0  # their CPU seconds so far
        self.cpu_capacity = 1.0  # cores the process may use (at most one)
        self.long_stall = True  # a throttled period under that limit stalls long
        self.set_cpu_capacity(cpu_capacity, long_stall)
        self.throttle_hold_seconds = throttle_hold_seconds
        # Where the monitor reads the kernel's count of throttled periods (None: no limit).
        self._throttled_periods_source = throttled_periods
        self._throttled_periods: int | None = None  # the count last read
        self._throttled_until = float("-inf")
        self.throttled = False  # throttled within the hold time (as of the last interval)
        self.max_redis_round_trip_seconds = max_redis_round_trip_seconds
        # Where the monitor reads it (the publisher's take_round_trip_seconds).
        self._redis_round_trip_source = redis_round_trip
        self.redis_round_trip = 0.0  # smoothed, seconds
        self.max_handshakes = max_handshakes
        self.max_age_seconds = max_age_seconds
        self.clock_skew_seconds = clock_skew_seconds
        self.interval = interval
        self._budget = HandshakeBudget(self._room(interval))
        self.lag = 0.0  # smoothed event-loop lag, seconds
        self.handshakes = 0  # upgrades in admission now
        self._log = ThrottledLog(log, LOG_LINES_PER_SECOND)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        redis_round_trip: Callable[[], float] | None = None,
        cpu_capacity: float = 1.0,
        throttled_periods: Callable[[], int | None] | None = None,
        long_stall: bool = True,
    ) -> LoadShedder:
        return cls(
            settings.overload_max_event_loop_lag_seconds,
            settings.overload_max_handshakes_in_flight,
            settings.overload_max_handshake_age_seconds,
            settings.signature_clock_skew_seconds,
            max_cpu=settings.overload_max_cpu_utilization,
            max_redis_round_trip_seconds=settings.overload_max_redis_round_trip_seconds,
            redis_round_trip=redis_round_trip,
            cpu_capacity=cpu_capacity,
            max_cpu_under_limit=settings.overload_max_cpu_utilization_under_limit,
            throttle_hold_seconds=settings.overload_cpu_throttled_hold_seconds,
            throttled_periods=throttled_periods,
            long_stall=long_stall,
        )

    def set_cpu_capacity(self, cores: float, long_stall: bool = True) -> None:
        """The cores this worker may use (at most one): its CPU signal is a share of them.
        Below one core, under a limit whose stall is long, the bound is the lower of the two
        settings (0 in either disables it there; 0 for a whole core disables it everywhere);
        under one whose stall is short the worker is as a slower core."""
        if cores <= 0:
            raise ValueError("a worker's CPU capacity is more than 0 cores")
        rescale = self.cpu_capacity / cores  # the same CPU time, as a share of the new capacity
        self.cpu *= rescale
        self.calls_cpu *= rescale
        self.cpu_capacity = cores
        self.long_stall = cores < 1.0 and long_stall
        whole_core = self._max_cpu_whole_core
        under_limit = min(whole_core, self._max_cpu_under_limit)
        self.max_cpu = under_limit if self.long_stall else whole_core
        metrics.WORKER_CPU_CAPACITY.set(cores)

    # --- the decision -------------------------------------------------------------------------
    def reason(self, age: float | None) -> str | None:
        """Which signal says the worker is behind (None: take the upgrade). `age`: seconds
        since the upgrade's TCP connection, when known."""
        if self.max_lag_seconds and self.lag > self.max_lag_seconds:
            return LAG
        if self.max_cpu and self._cpu_over_bound():
            return CPU
        if self.long_stall and self._budget.seconds <= 0 and self._near_cpu_bound():
            return HEADROOM
        if self.throttled:
            return THROTTLED
        round_trip_bound = self.max_redis_round_trip_seconds
        if round_trip_bound and self.redis_round_trip > round_trip_bound:
            return REDIS_ROUND_TRIP
        if self.max_handshakes and self.handshakes > self.max_handshakes:
            return IN_FLIGHT
        if self.max_age_seconds and age is not None and age > self.max_age_seconds:
            return AGE
        return None

    def _cpu_over_bound(self) -> bool:
        if self.long_stall:  # a handshake that overruns a period stalls every call: all counts
            return self.cpu > self.max_cpu
        return self.calls_cpu > self.max_cpu or self.cpu > max(self.max_cpu, SATURATED_CPU)

    def _near_cpu_bound(self) -> bool:
        return self.max_cpu > 0 and self.cpu >= NEAR_BOUND_CPU_FRACTION * self.max_cpu

    def _strained(self) -> bool:
        return (
            (self.max_lag_seconds > 0 and self.lag >= STRAIN_FRACTION * self.max_lag_seconds)
            or (
                self.max_handshakes > 0 and self.handshakes >= STRAIN_FRACTION * self.max_handshakes
            )
            or (self.max_cpu > 0 and self.cpu >= self.max_cpu * 0.8)
        )

    def shed(self, headers: Sequence[tuple[bytes, bytes]], connected_at: float | None) -> bool:
        """True when this upgrade must be refused (counted and logged here, the log at most
        once a second so an overload does not also flood the log). Asked twice per upgrade:
        by the HTTP guard as soon as the head is in (the cheapest refusal), and by admission
        (an upgrade may have waited in the worker since). `connected_at`: the TCP
        connection's time.monotonic(), when known."""
        age = None if connected_at is None else time.monotonic() - connected_at
        created = signature_created(headers) if self._strained() else None
        if created is not None:  # the signer's clock may be this far ahead: not counted
            signed_age = time.time() - created - self.clock_skew_seconds
            age = signed_age if age is None else max(age, signed_age)
        reason = self.reason(age)
        if reason is None:
            return False
        metrics.CONNECTIONS_REJECTED.labels("overloaded").inc()
        metrics.LOAD_SHED.labels(reason).inc()
        self._log.log(
            logging.WARNING,
            "overloaded",
            "overloaded: upgrades refused",
            {
                "cause": "overloaded",
                "signal": reason,
                "event_loop_lag_ms": round(self.lag * 1000, 1),
                "cpu_utilization": round(self.cpu, 2),
                "calls_cpu_utilization": round(self.calls_cpu, 2),
                "cpu_headroom_ms": round(self._budget.seconds * 1000, 2),
                "cpu_throttled": self.throttled,
                "redis_round_trip_ms": round(self.redis_round_trip * 1000, 1),
                "handshakes_in_flight": self.handshakes,
            },
        )
        return True

    def connected_at(self, scope: Mapping[str, Any]) -> float | None:
        """The TCP connection's start, as the HTTP guard put it in the scope's state."""
        value = (scope.get("state") or {}).get(CONNECTED_AT)
        return value if isinstance(value, float) else None

    @staticmethod
    def handshake_cpu(scope: Mapping[str, Any]) -> HandshakeCpu:
        """The upgrade's CPU count, as the HTTP guard began it (a new one without the guard)."""
        value = (scope.get("state") or {}).get(HANDSHAKE_CPU)
        return value if isinstance(value, HandshakeCpu) else HandshakeCpu()

    def handshake_authenticated(self, cpu: HandshakeCpu) -> None:
        """An upgrade's signature checked out: it is charged to this interval's headroom,
        where that is asked for (elsewhere a debt would only wait for a resize, or for the
        share to rise past half the bound long after the burst that ran it up)."""
        if self.long_stall and self._near_cpu_bound():
            cpu.charged = self._budget.spend()

    def handshake_refused(self, cpu: HandshakeCpu) -> None:
        """A charged upgrade was refused after all (a replayed nonce, a session-id conflict,
        a limit, Redis gone): its charge is given back. What it spent is in the share, as
        any refusal's is."""
        charged, cpu.charged = cpu.charged, 0.0
        self._budget.refund(charged)

    def handshake_accepted(self, cpu: HandshakeCpu) -> None:
        """An accepted call's handshake is over: its CPU is left out of the calls' share, and
        the next upgrades are charged what it cost."""
        self._accepted_handshakes_cpu += cpu.seconds
        self._budget.measured(cpu.seconds)
        metrics.ACCEPTED_HANDSHAKES_CPU.inc(cpu.seconds)

    # --- handshakes in flight (the endpoint brackets admission with these) --------------------
    def handshake_started(self) -> None:
        self.handshakes += 1
        metrics.HANDSHAKES_IN_FLIGHT.set(self.handshakes)

    def handshake_finished(self) -> None:
        self.handshakes -= 1
        metrics.HANDSHAKES_IN_FLIGHT.set(self.handshakes)

    # --- the lag monitor ------------------------------------------------------------------------
    def record_lag(self, sample: float) -> None:
        self.lag += LAG_SMOOTHING * (max(0.0, sample) - self.lag)
        metrics.EVENT_LOOP_LAG.set(self.lag)

    def record_cpu(self, sample: float, handshakes: float = 0.0) -> None:
        """`sample`: cores used over the last interval (CPU seconds per second); `handshakes`:
        the part of it that accepted calls' handshakes took."""
        self.cpu += CPU_SMOOTHING * (sample / self.cpu_capacity - self.cpu)
        calls = max(0.0, sample - handshakes) / self.cpu_capacity
        self.calls_cpu += CPU_SMOOTHING * (calls - self.calls_cpu)
        metrics.WORKER_CPU_UTILIZATION.set(self.cpu)
        metrics.WORKER_CALLS_CPU_UTILIZATION.set(self.calls_cpu)

    def _room(self, seconds: float) -> float:
        """CPU seconds the calls' share (accepted handshakes left out) leaves under the bound
        over `seconds`: the handshakes are what it pays for, and counting them in the share
        too would halve what genuine calls may take."""
        return max(0.0, self.max_cpu - self.calls_cpu) * self.cpu_capacity * seconds

    def refill_headroom(self, seconds: float) -> None:
        """A monitor interval of `seconds` has passed: the room it leaves under the bound, at
        the share just recorded, is what the next one's upgrades may take."""
        self._budget.refill(self._room(seconds))

    def record_throttled_periods(self, count: int | None, now: float) -> None:
        """`count`: the kernel's count of throttled periods so far (None: not known). One
        more than last time, with the CPU share past `NEAR_BOUND_CPU_FRACTION` of its
        bound, holds new upgrades off for the hold time from `now`; with the CPU bound 0
        (CPU shedding off) it is only counted."""
        seen, self._throttled_periods = self._throttled_periods, count
        if count is not None and seen is not None and count > seen:
            metrics.WORKER_CPU_THROTTLED_PERIODS.inc(count - seen)
            if self.throttle_hold_seconds and self._near_cpu_bound():  # CPU bound 0: off too
                self._throttled_until = now + self.throttle_hold_seconds
        self.throttled = now < self._throttled_until

    def record_redis_round_trip(self, sample: float) -> None:
        self.redis_round_trip += LAG_SMOOTHING * (sample - self.redis_round_trip)
        metrics.REDIS_ROUND_TRIP.set(self.redis_round_trip)

    async def run(self) -> None:
        """Measure how late the loop wakes this task, how busy the process is, whether the
        kernel throttled it and how long Redis takes to answer its writes, forever (a gateway
        background task)."""
        started, cpu_started = time.monotonic(), time.process_time()
        handshakes_started = self._accepted_handshakes_cpu
        while True:
            await asyncio.sleep(self.interval)
            now, cpu_now = time.monotonic(), time.process_time()
            handshakes_now = self._accepted_handshakes_cpu
            elapsed = now - started
            self.record_lag(elapsed - self.interval)
            if elapsed > 0:
                handshakes = (handshakes_now - handshakes_started) / elapsed
                self.record_cpu((cpu_now - cpu_started) / elapsed, handshakes)
                # A late wake-up (the loop was busy) brings no more than one interval's room.
                self.refill_headroom(min(elapsed, self.interval))
            if self._throttled_periods_source is not None:
                self.record_throttled_periods(self._throttled_periods_source(), now)
            if self._redis_round_trip_source is not None:
                self.record_redis_round_trip(self._redis_round_trip_source())
            started, cpu_started, handshakes_started = now, cpu_now, handshakes_now
