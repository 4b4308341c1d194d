"""The load-shedding decision: each signal alone refuses, 0 disables it, lag is smoothed."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from app.config import Settings
from app.transport.load_shedding import (
    AGE,
    CONNECTED_AT,
    CPU,
    HANDSHAKE_CPU,
    HEADROOM,
    IN_FLIGHT,
    LAG,
    REDIS_ROUND_TRIP,
    THROTTLED,
    HandshakeBudget,
    HandshakeCpu,
    LoadShedder,
)


def metric(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def shedder(lag: float = 0.1, handshakes: int = 10, age: float = 2.0) -> LoadShedder:
    return LoadShedder(max_lag_seconds=lag, max_handshakes=handshakes, max_age_seconds=age)


def test_an_idle_worker_takes_upgrades() -> None:
    assert shedder().reason(age=0.001) is None
    assert shedder().reason(age=None) is None


def test_sustained_lag_sheds_and_a_lone_pause_does_not() -> None:
    decider = shedder(lag=0.1)
    decider.record_lag(0.25)  # one full collection's pause
    assert decider.reason(age=None) is None
    for _ in range(5):
        decider.record_lag(0.25)
    assert decider.lag > 0.1
    assert decider.reason(age=None) == LAG
    for _ in range(20):  # the loop catches up
        decider.record_lag(0.0)
    assert decider.reason(age=None) is None


def test_handshakes_in_flight_above_the_bound_shed() -> None:
    decider = shedder(handshakes=2)
    decider.handshake_started()
    decider.handshake_started()
    assert decider.reason(age=None) is None
    decider.handshake_started()
    assert decider.reason(age=None) == IN_FLIGHT
    decider.handshake_finished()
    assert decider.reason(age=None) is None


def test_an_old_handshake_is_shed() -> None:
    assert shedder(age=2.0).reason(age=2.5) == AGE
    assert shedder(age=2.0).reason(age=1.5) is None


def test_zero_disables_each_signal() -> None:
    decider = shedder(lag=0, handshakes=0, age=0)
    for _ in range(10):
        decider.record_lag(5.0)
        decider.handshake_started()
    assert decider.reason(age=60.0) is None


def test_the_connection_start_comes_from_the_scope_and_ages_the_upgrade() -> None:
    decider = shedder(age=2.0)
    assert decider.connected_at({"state": {}}) is None
    assert decider.connected_at({}) is None
    assert decider.connected_at({"state": {CONNECTED_AT: 12.5}}) == 12.5
    assert decider.shed([], None) is False
    assert decider.shed([], time.monotonic()) is False
    assert decider.shed([], 0.0) is True  # monotonic 0: long ago


def test_an_upgrade_signed_long_ago_is_shed_beyond_the_clock_skew() -> None:
    decider = LoadShedder(max_lag_seconds=0.1, max_handshakes=10, max_age_seconds=2.0,
                          clock_skew_seconds=3.0)  # fmt: skip
    now = int(time.time())

    def headers(created: int) -> list[tuple[bytes, bytes]]:
        signature_input = f'sig1=("@request-target");keyid="k";created={created};expires=9'
        return [(b"signature-input", signature_input.encode())]

    # The signed age is the client's word: a gateway at ease never refuses for it (a caller
    # whose clock runs behind would otherwise be refused on every call).
    assert decider.shed(headers(now - 20), None) is False
    for _ in range(3):  # a quarter of the handshake bound: strain
        decider.handshake_started()
    assert decider.shed(headers(now - 4), None) is False  # within skew + bound
    assert decider.shed(headers(now - 20), None) is True
    assert decider.shed([(b"signature-input", b"junk")], None) is False


def test_defaults_shed_nothing_on_an_idle_loop() -> None:
    decider = LoadShedder.from_settings(Settings())

    async def measure() -> None:
        monitor = asyncio.create_task(decider.run())
        await asyncio.sleep(decider.interval * 4)
        monitor.cancel()

    asyncio.run(measure())
    assert decider.reason(age=0.0) is None


def test_a_busy_core_sheds_before_the_loop_lags() -> None:
    decider = LoadShedder(max_lag_seconds=0.1, max_handshakes=10, max_age_seconds=2.0,
                          max_cpu=0.9)  # fmt: skip
    decider.record_cpu(1.0)  # one busy interval is not a trend
    assert decider.reason(age=None) is None
    for _ in range(60):  # three seconds of a saturated core
        decider.record_cpu(1.0)
    assert decider.cpu > 0.9
    assert decider.reason(age=None) == CPU
    for _ in range(60):
        decider.record_cpu(0.5)
    assert decider.reason(age=None) is None


def test_under_a_cpu_limit_the_share_is_of_the_limit() -> None:
    limited = LoadShedder(max_lag_seconds=0.1, max_handshakes=10, max_age_seconds=2.0,
                          max_cpu=0.9, cpu_capacity=0.5)  # fmt: skip
    unlimited = LoadShedder(max_lag_seconds=0.1, max_handshakes=10, max_age_seconds=2.0,
                            max_cpu=0.9)  # fmt: skip
    for _ in range(100):  # five seconds at half a core: all a half-core limit lets it use
        limited.record_cpu(0.5)
        unlimited.record_cpu(0.5)
    assert limited.cpu > 0.9
    assert limited.reason(age=None) == CPU
    assert unlimited.reason(age=None) is None


def test_under_a_cpu_limit_the_bound_is_the_limited_one() -> None:
    settings = Settings(
        overload_max_cpu_utilization=0.95, overload_max_cpu_utilization_under_limit=0.8
    )
    assert LoadShedder.from_settings(settings).max_cpu == 0.95
    assert LoadShedder.from_settings(settings, cpu_capacity=1.0).max_cpu == 0.95
    limited = LoadShedder.from_settings(settings, cpu_capacity=0.3)
    assert limited.max_cpu == 0.8
    for _ in range(100):  # 0.26 of a core: 0.87 of the limit, above 0.8 and below 0.95
        limited.record_cpu(0.26)
    assert limited.reason(age=None) == CPU


def test_a_changed_limit_changes_the_share_the_bound_and_the_gauge() -> None:
    settings = Settings(
        overload_max_cpu_utilization=0.95, overload_max_cpu_utilization_under_limit=0.8
    )
    resized = LoadShedder.from_settings(settings)
    resized.set_cpu_capacity(0.3)  # the pod's limit lowered while it runs
    assert (resized.cpu_capacity, resized.max_cpu) == (0.3, 0.8)
    assert metric("audiohook_worker_cpu_capacity_cores") == 0.3
    for _ in range(100):
        resized.record_cpu(0.26)
    assert resized.reason(age=None) == CPU
    resized.set_cpu_capacity(1.0)  # and lifted again: 0.26 of a core is far from a bound
    assert (resized.cpu_capacity, resized.max_cpu) == (1.0, 0.95)
    assert metric("audiohook_worker_cpu_capacity_cores") == 1.0
    for _ in range(100):
        resized.record_cpu(0.26)
    assert resized.reason(age=None) is None


def test_under_a_limit_the_lower_bound_applies_and_zero_still_disables() -> None:
    def bound(whole_core: float, under_limit: float) -> float:
        settings = Settings(
            overload_max_cpu_utilization=whole_core,
            overload_max_cpu_utilization_under_limit=under_limit,
        )
        return LoadShedder.from_settings(settings, cpu_capacity=0.5).max_cpu

    assert bound(0.95, 0.8) == 0.8
    assert bound(0.7, 0.8) == 0.7  # an operator's lower bound is kept
    assert bound(0.0, 0.8) == 0.0  # CPU shedding turned off stays off
    assert bound(0.95, 0.0) == 0.0


def test_a_resize_keeps_the_cpu_used_as_a_share_of_the_new_capacity() -> None:
    resized = LoadShedder(max_lag_seconds=0.1, max_handshakes=10, max_age_seconds=2.0,
                          max_cpu=0.9)  # fmt: skip
    for _ in range(200):
        resized.record_cpu(0.25)
    resized.set_cpu_capacity(0.5)
    assert abs(resized.cpu - 0.5) < 0.01  # a quarter of a core is half of the new limit
    assert abs(resized.calls_cpu - 0.5) < 0.01


def test_the_monitor_measures_the_process_cpu() -> None:
    decider = LoadShedder(max_lag_seconds=0.1, max_handshakes=10, max_age_seconds=2.0,
                          interval=0.01, max_cpu=0.9)  # fmt: skip

    async def busy() -> float:
        """Spin for half a second; the share of a core this process got meanwhile."""
        monitor = asyncio.create_task(decider.run())
        started, cpu_started = time.monotonic(), time.process_time()
        deadline = started + 0.5
        while time.monotonic() < deadline:  # the loop's own thread spins, between wake-ups
            sum(range(20_000))
            await asyncio.sleep(0)
        monitor.cancel()
        return (time.process_time() - cpu_started) / (time.monotonic() - started)

    share = asyncio.run(busy())
    # About 50 samples of a 0.05 smoothing: most of the way up from 0 to what the process got
    # (a full core on an idle machine, less on a busy one).
    assert 0.5 * share < decider.cpu < 1.1


# --- accepted calls' handshakes -------------------------------------------------------------


def cpu_shedder(cores: float = 1.0, long_stall: bool = True) -> LoadShedder:
    settings = Settings(
        overload_max_cpu_utilization=0.95, overload_max_cpu_utilization_under_limit=0.8
    )
    return LoadShedder.from_settings(settings, cpu_capacity=cores, long_stall=long_stall)


def test_a_call_ramp_whose_handshakes_fill_the_core_is_not_shed() -> None:
    ramp = cpu_shedder()
    for _ in range(100):  # 0.97 of the core, 0.4 of it accepted calls' handshakes
        ramp.record_cpu(0.97, handshakes=0.4)
    assert ramp.cpu > 0.95
    assert ramp.calls_cpu < 0.6
    assert metric("audiohook_worker_calls_cpu_utilization") == ramp.calls_cpu
    assert ramp.reason(age=None) is None
    for _ in range(100):  # the same CPU, all of it calls that stay
        ramp.record_cpu(0.97)
    assert ramp.reason(age=None) == CPU


def test_a_saturated_core_sheds_whatever_took_it() -> None:
    saturated = cpu_shedder()
    for _ in range(100):
        saturated.record_cpu(1.0, handshakes=0.9)
    assert saturated.calls_cpu < 0.2
    assert saturated.reason(age=None) == CPU


def test_under_a_limit_whose_stall_is_long_handshakes_count() -> None:
    # 0.27 of a core under a 0.3 limit (0.9 of it), half of it handshakes.
    limited = cpu_shedder(cores=0.3, long_stall=True)
    slower_core = cpu_shedder(cores=0.3, long_stall=False)
    assert (limited.max_cpu, slower_core.max_cpu) == (0.8, 0.95)
    for decider in (limited, slower_core):
        for _ in range(100):
            decider.record_cpu(0.27, handshakes=0.135)
    assert limited.reason(age=None) == CPU
    assert slower_core.reason(age=None) is None
    slower_core.set_cpu_capacity(0.3, long_stall=True)  # the period made longer in place
    assert slower_core.max_cpu == 0.8
    assert slower_core.reason(age=None) == CPU


def spin(seconds: float) -> None:
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        sum(range(1_000))


def test_a_handshake_counts_only_the_cpu_between_start_and_stop() -> None:
    cpu = HandshakeCpu()
    cpu.stop()  # not started: nothing
    spin(0.02)
    assert cpu.seconds == 0.0
    cpu.start()
    spin(0.02)
    cpu.stop()
    counted = cpu.seconds
    assert 0.02 <= counted < 0.5
    spin(0.02)
    cpu.stop()
    assert cpu.seconds == counted
    assert LoadShedder.handshake_cpu({"state": {HANDSHAKE_CPU: cpu}}) is cpu
    assert LoadShedder.handshake_cpu({"state": {}}).seconds == 0.0  # no guard: a new count


def test_the_monitor_leaves_accepted_handshakes_out_of_the_calls_share() -> None:
    decider = LoadShedder(max_lag_seconds=0.1, max_handshakes=10, max_age_seconds=2.0,
                          interval=0.01, max_cpu=0.9)  # fmt: skip
    before = metric("audiohook_accepted_handshakes_cpu_seconds_total") or 0.0

    async def accept_handshakes_for(seconds: float) -> float:
        """Spin, half of it as accepted handshakes, the monitor running; the CPU they took."""
        monitor = asyncio.create_task(decider.run())
        taken = 0.0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            handshake = HandshakeCpu()
            handshake.start()
            spin(0.002)
            handshake.stop()
            decider.handshake_accepted(handshake)
            taken += handshake.seconds
            spin(0.002)  # the calls' own work
            await asyncio.sleep(0)
        monitor.cancel()
        return taken

    taken = asyncio.run(accept_handshakes_for(1.0))
    assert decider.cpu > 0.3  # busy, half of it handshakes: every interval's own half is left out
    assert 0.3 * decider.cpu < decider.calls_cpu < 0.7 * decider.cpu
    counted = (metric("audiohook_accepted_handshakes_cpu_seconds_total") or 0.0) - before
    assert abs(counted - taken) < 1e-6


# --- CPU headroom under a limit whose stall is long ------------------------------------------


def test_the_budget_pays_a_debt_first_saves_one_intervals_room_and_takes_refunds() -> None:
    budget = HandshakeBudget(room=12.0)  # whole numbers: exact in floating point
    budget.cost = 2.0
    budget.refill(3.0)
    assert budget.seconds == 3.0  # the idle start's 12 are not saved up
    budget.spend()
    budget.spend()
    assert budget.seconds == -1.0
    budget.refill(3.0)
    assert budget.seconds == 2.0  # the debt paid first
    budget.refund(2.0)  # charged in the interval before: not saved up past this one's room
    assert budget.seconds == 3.0


def headroom_shedder(cores: float = 0.3, long_stall: bool = True) -> LoadShedder:
    """At 0.6 of a 0.3-core limit, all of it the calls' own: (0.8 - 0.6) x 0.3 core x 50 ms =
    3 ms of room an interval where the stall is long."""
    decider = cpu_shedder(cores, long_stall)
    decider.cpu = decider.calls_cpu = 0.6
    return decider


def taken_in_one_interval(decider: LoadShedder, offered: int = 50) -> list[HandshakeCpu]:
    """The counts of the authenticated upgrades taken of `offered` arriving within one 50 ms
    interval."""
    decider.refill_headroom(0.05)
    taken = []
    for _ in range(offered):
        if decider.reason(age=None) is None:
            taken.append(HandshakeCpu())
            decider.handshake_authenticated(taken[-1])
    return taken


def test_under_a_long_stall_limit_an_interval_takes_what_its_headroom_pays_for() -> None:
    decider = headroom_shedder()
    taken = taken_in_one_interval(decider)
    assert len(taken) == 2  # 3 ms of room, 2 ms charged each: the second into debt
    assert [handshake.charged for handshake in taken] == [0.002, 0.002]
    assert decider.reason(age=None) == HEADROOM
    shed = REGISTRY.get_sample_value("audiohook_load_shed_total", {"signal": HEADROOM}) or 0.0
    assert decider.shed([], connected_at=None)
    assert REGISTRY.get_sample_value("audiohook_load_shed_total", {"signal": HEADROOM}) == shed + 1
    for _ in range(30):  # the charge moves with what accepted handshakes cost
        decider.handshake_accepted(taken[1])  # (no CPU counted: 0 s)
    decider.handshake_refused(taken[0])  # refused after all (a replayed nonce): given back
    decider.handshake_refused(taken[0])  # once, and what it was charged
    assert decider.reason(age=None) is None
    assert taken[0].charged == 0.0
    assert decider.shed([], connected_at=None) is False
    decider.handshake_authenticated(HandshakeCpu())  # charged about 0.1 ms now
    assert decider.reason(age=None) is None  # the 2 ms given back, not today's 0.1 ms
    decider.calls_cpu = 0.8  # the calls at the bound: no room, nothing taken
    assert taken_in_one_interval(decider) == []


def test_the_room_is_what_the_calls_leave_not_the_handshakes_it_paid_for() -> None:
    decider = headroom_shedder()
    decider.cpu = 0.78  # the interval's handshakes in the whole share: the room is the same
    assert len(taken_in_one_interval(decider)) == 2


def test_below_half_the_bound_a_burst_passes_uncharged() -> None:
    """A replica's first calls, arriving together: throttled, maybe, and it passes; the share
    shows what they left behind."""
    decider = headroom_shedder()
    decider.cpu = 0.39  # under half of the bound (0.8)
    taken = taken_in_one_interval(decider)
    assert len(taken) == 50
    assert not any(handshake.charged for handshake in taken)  # 0.0 each
    decider.cpu = 0.6
    assert len(taken_in_one_interval(decider)) == 2  # no debt from the burst


def test_the_charge_follows_what_accepted_handshakes_cost() -> None:
    decider = headroom_shedder()
    for _ in range(60):
        handshake = HandshakeCpu()
        handshake.seconds = 0.0005
        decider.handshake_accepted(handshake)
    assert len(taken_in_one_interval(decider)) == 6  # 3 ms at about 0.5 ms each


def test_headroom_is_not_asked_for_a_whole_core_a_short_stall_or_with_the_cpu_bound_0() -> None:
    unlimited = headroom_shedder(cores=1.0)
    slower_core = headroom_shedder(long_stall=False)
    for decider in (unlimited, slower_core):
        assert len(taken_in_one_interval(decider)) == 50
    settings = Settings(overload_max_cpu_utilization=0)
    cpu_off = LoadShedder.from_settings(settings, cpu_capacity=0.3, long_stall=True)
    assert len(taken_in_one_interval(cpu_off)) == 50
    # Nor charged there: the period made longer in place finds no debt run up meanwhile.
    slower_core.set_cpu_capacity(0.3, long_stall=True)
    assert len(taken_in_one_interval(slower_core)) == 2


def test_the_headroom_is_asked_from_half_the_bound_and_spent_at_0() -> None:
    decider = headroom_shedder()
    decider.cpu = 0.4  # exactly half the bound
    assert len(taken_in_one_interval(decider)) == 2
    budget = HandshakeBudget(room=1.0)
    budget.cost = 1.0
    decider._budget = budget
    decider.handshake_authenticated(HandshakeCpu())  # exactly spent
    assert decider.reason(age=None) == HEADROOM


def test_the_monitor_pays_off_a_debt_and_takes_upgrades_again() -> None:
    decider = LoadShedder(max_lag_seconds=0.0, max_handshakes=0, max_age_seconds=0.0,
                          interval=0.01, max_cpu=0.8, cpu_capacity=0.3)  # fmt: skip
    decider.cpu = decider.calls_cpu = 0.6
    for _ in range(2):  # 4 ms charged against the 2.4 ms an idle start left (0.8 x 0.3 x 10 ms)
        decider.handshake_authenticated(HandshakeCpu())
    assert decider.reason(age=None) == HEADROOM

    async def until_taken() -> None:
        monitor = asyncio.create_task(decider.run())
        async with asyncio.timeout(5):
            while decider.reason(age=None) is not None:
                await asyncio.sleep(0.002)
        monitor.cancel()

    asyncio.run(until_taken())
    # Taken because intervals brought headroom (0.7 ms each at first: three pay the debt),
    # not because the idle process's share fell under half the bound (that takes eight).
    assert decider.cpu >= 0.4


def test_a_late_wake_up_brings_one_intervals_room() -> None:
    decider = LoadShedder(max_lag_seconds=0.0, max_handshakes=0, max_age_seconds=0.0,
                          interval=0.01, max_cpu=0.8, cpu_capacity=0.3)  # fmt: skip
    decider.cpu = decider.calls_cpu = 0.6  # about 0.7 ms of room an interval

    async def taken_after_a_busy_loop() -> int:
        monitor = asyncio.create_task(decider.run())
        await asyncio.sleep(0.015)  # one interval as usual
        time.sleep(0.2)  # the loop busy for twenty intervals
        await asyncio.sleep(0.001)  # the monitor's late wake-up runs first (its timer is older)
        taken = 0
        while decider.reason(age=None) is None:
            decider.handshake_authenticated(HandshakeCpu())
            taken += 1
        monitor.cancel()
        return taken

    assert asyncio.run(taken_after_a_busy_loop()) == 1  # twenty intervals' room would take eight


def test_slow_redis_round_trips_shed_and_a_lone_slow_one_does_not() -> None:
    decider = LoadShedder(max_lag_seconds=0.1, max_handshakes=10, max_age_seconds=2.0,
                          max_redis_round_trip_seconds=0.2)  # fmt: skip
    decider.record_redis_round_trip(0.4)  # one slow round trip
    assert decider.reason(age=None) is None
    for _ in range(5):  # a quarter of a second of round trips of half a second
        decider.record_redis_round_trip(0.5)
    assert decider.reason(age=None) == REDIS_ROUND_TRIP
    for _ in range(20):  # Redis keeps up again
        decider.record_redis_round_trip(0.01)
    assert decider.reason(age=None) is None
    disabled = LoadShedder(max_lag_seconds=0.1, max_handshakes=10, max_age_seconds=2.0)
    for _ in range(20):
        disabled.record_redis_round_trip(5.0)
    assert disabled.reason(age=None) is None


def test_the_monitor_reads_the_redis_round_trip_from_its_source() -> None:
    delays = iter([0.0, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3])
    asked = 0

    def source() -> float:
        nonlocal asked
        asked += 1
        return next(delays, 0.3)

    # No lag bound: a busy machine's late wake-ups must not answer first.
    decider = LoadShedder(max_lag_seconds=0.0, max_handshakes=10, max_age_seconds=2.0,
                          interval=0.005, max_redis_round_trip_seconds=0.2,
                          redis_round_trip=source)  # fmt: skip

    async def measure() -> None:
        monitor = asyncio.create_task(decider.run())
        while asked < 10:
            await asyncio.sleep(0.005)
        monitor.cancel()

    asyncio.run(measure())
    assert decider.redis_round_trip > 0.2
    assert decider.reason(age=None) == REDIS_ROUND_TRIP


def throttle_shedder(hold: float = 0.25, cpu: float = 0.6) -> LoadShedder:
    """Under a 0.3-core limit with the CPU bound 0.8, at `cpu` of the limit."""
    decider = LoadShedder(max_lag_seconds=0.0, max_handshakes=0, max_age_seconds=0.0,
                          max_cpu=0.95, max_cpu_under_limit=0.8, cpu_capacity=0.3,
                          throttle_hold_seconds=hold)  # fmt: skip
    decider.cpu = cpu
    return decider


def test_a_throttled_period_sheds_for_the_hold_time() -> None:
    decider = throttle_shedder()
    before = metric("audiohook_worker_cpu_throttled_periods_total") or 0.0
    decider.record_throttled_periods(7, now=100.0)  # the first count read: a baseline
    assert decider.reason(age=None) is None
    decider.record_throttled_periods(7, now=100.05)
    assert decider.reason(age=None) is None
    decider.record_throttled_periods(9, now=100.10)  # stopped by the kernel twice since
    assert decider.reason(age=None) == THROTTLED
    assert metric("audiohook_worker_cpu_throttled_periods_total") == before + 2
    decider.record_throttled_periods(9, now=100.30)  # within the hold
    assert decider.reason(age=None) == THROTTLED
    decider.record_throttled_periods(9, now=100.36)  # past it, and not throttled again
    assert decider.reason(age=None) is None


def test_a_throttled_period_below_half_the_cpu_bound_does_not_shed() -> None:
    """A replica's first calls, arriving together, are throttled too, and it passes."""
    decider = throttle_shedder(cpu=0.3)  # under half of the bound (0.8)
    decider.record_throttled_periods(0, now=1.0)
    decider.record_throttled_periods(3, now=1.05)
    assert decider.reason(age=None) is None
    decider.cpu = 0.45
    decider.record_throttled_periods(4, now=1.10)
    assert decider.reason(age=None) == THROTTLED


def test_no_hold_no_count_or_no_cpu_bound_never_sheds_on_throttling() -> None:
    disabled = throttle_shedder(hold=0.0)
    unknown = throttle_shedder()
    for now, count in ((1.0, 0), (1.05, 5), (1.1, 9)):
        disabled.record_throttled_periods(count, now)
        unknown.record_throttled_periods(None, now)
    assert disabled.reason(age=None) is None
    assert unknown.reason(age=None) is None
    cpu_off = LoadShedder(max_lag_seconds=0.0, max_handshakes=0, max_age_seconds=0.0,
                          max_cpu=0.95, max_cpu_under_limit=0.0, cpu_capacity=0.3,
                          throttle_hold_seconds=0.25)  # fmt: skip
    cpu_off.cpu = 0.01
    for now, count in ((1.0, 0), (1.05, 5)):
        cpu_off.record_throttled_periods(count, now)
    assert cpu_off.reason(age=None) is None  # a CPU bound of 0 turns this signal off too
    # A count that went down is a new baseline.
    shrunk = throttle_shedder()
    shrunk.record_throttled_periods(50, now=1.0)
    shrunk.record_throttled_periods(2, now=1.05)
    assert shrunk.reason(age=None) is None


def test_the_monitor_reads_the_throttled_periods_from_their_source() -> None:
    counts = iter(range(0, 1000, 1))  # one more throttled period at every look
    asked = 0

    def source() -> int:
        nonlocal asked
        asked += 1
        return next(counts)

    decider = LoadShedder(max_lag_seconds=0.0, max_handshakes=0, max_age_seconds=0.0,
                          interval=0.005, max_cpu=0.95, throttle_hold_seconds=0.25,
                          throttled_periods=source)  # fmt: skip
    decider.cpu = 0.7  # under the CPU bound, past half of it

    async def measure() -> None:
        monitor = asyncio.create_task(decider.run())
        async with asyncio.timeout(5):
            while asked < 5:
                await asyncio.sleep(0.005)
        monitor.cancel()

    asyncio.run(measure())
    assert decider.reason(age=None) == THROTTLED


def test_the_gateway_setting_and_its_default() -> None:
    assert LoadShedder.from_settings(Settings()).throttle_hold_seconds == 0.25
    settings = Settings(overload_cpu_throttled_hold_seconds=0)
    assert LoadShedder.from_settings(settings).throttle_hold_seconds == 0
