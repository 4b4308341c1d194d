"""The gateway hands load shedding the CPU limit it reads at start, and says so."""

from __future__ import annotations

import json
import logging

import pytest

from app import runtime
from app.config import Settings
from app.runtime import Gateway
from tests.support.gateway_process import TEST_INTEGRATION


def test_a_worker_under_a_limit_sheds_on_a_share_of_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "worker_cpu_capacity", lambda: 0.5)
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
