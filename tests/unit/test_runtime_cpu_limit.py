"""The gateway hands load shedding the CPU limit it reads at start, and says so."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from app import runtime
from app.config import Settings
from app.cpu_limit import CpuLimit
from app.runtime import Gateway
from app.transport.load_shedding import THROTTLED
from tests.support.gateway_process import TEST_INTEGRATION


def test_a_worker_under_a_limit_sheds_on_a_share_of_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "worker_cpu_limit", lambda: CpuLimit(0.5, long_stall=True))
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",  # never connected: the gateway is not started
        integrations=json.dumps([TEST_INTEGRATION]),
        overload_max_cpu_utilization=0.95,
        overload_max_cpu_utilization_under_limit=0.8,
    )
    with caplog.at_level(logging.INFO, logger="app.runtime"):
        gateway = Gateway(settings)
    assert (gateway.load_shedder.cpu_capacity, gateway.load_shedder.max_cpu) == (0.5, 0.8)
    (line,) = [record for record in caplog.records if record.getMessage() == "cpu limit"]
    assert line.__dict__["cpu_capacity_cores"] == 0.5
    assert line.__dict__["max_cpu_utilization"] == 0.8
    assert line.__dict__["long_stall"] is True


def test_a_limit_whose_stall_is_short_is_taken_as_a_slower_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = CpuLimit(0.625, long_stall=False)  # 12.5 ms per 20 ms period: 7.5 ms stalls at most
    monkeypatch.setattr(runtime, "worker_cpu_limit", lambda: limit)
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",  # never connected: the gateway is not started
        integrations=json.dumps([TEST_INTEGRATION]),
        overload_max_cpu_utilization=0.95,
        overload_max_cpu_utilization_under_limit=0.8,
    )
    gateway = Gateway(settings)
    shedder = gateway.load_shedder
    assert (shedder.cpu_capacity, shedder.long_stall, shedder.max_cpu) == (0.625, False, 0.95)
    gateway._cpu_limit_changed(CpuLimit(0.625, long_stall=True))  # the period made longer
    assert (shedder.long_stall, shedder.max_cpu) == (True, 0.8)
    gateway._cpu_limit_changed(limit)
    assert (shedder.long_stall, shedder.max_cpu) == (False, 0.95)


class CountingThrottles:
    """Stands for the cgroup's count: one more throttled period at every look."""

    def __init__(self) -> None:
        self.count = 0
        self.looked_for = 0

    def find(self) -> None:
        self.looked_for += 1

    def __call__(self) -> int:
        self.count += 1
        return self.count


def test_load_shedding_reads_the_kernels_throttled_periods_and_rechecks_the_cgroups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "worker_cpu_limit", lambda: CpuLimit(0.3, long_stall=True))
    monkeypatch.setattr(runtime, "ThrottledPeriods", CountingThrottles)
    settings = Settings(
        redis_url="redis://127.0.0.1:1/0",  # never connected: the gateway is not started
        integrations=json.dumps([TEST_INTEGRATION]),
    )
    gateway = Gateway(settings)
    shedder = gateway.load_shedder
    throttles = gateway.throttled_periods
    assert isinstance(throttles, CountingThrottles)

    async def monitor_a_while() -> None:
        shedder.cpu = 0.6  # under the bound (0.8), past half of it: a throttled period sheds
        task = asyncio.create_task(shedder.run())
        async with asyncio.timeout(5):
            while throttles.count < 3:
                await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(monitor_a_while())
    assert shedder.reason(age=None) == THROTTLED
    # Every recheck of the limit looks for the limited cgroups again, whether or not the
    # capacity changed (a limit at a core or more is capacity one either way).
    assert gateway._read_cpu_limit() == CpuLimit(0.3, long_stall=True)
    assert throttles.looked_for == 1
