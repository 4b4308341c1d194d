"""`python -m app.bench.upgrade_cost`: calls opened one after another on a gateway it starts
itself, and the gateway's CPU per call read from the process."""

from __future__ import annotations

import json

from tests.integration.bench.support import run_bench


def test_upgrade_cost_bench_reports_cpu_per_call() -> None:
    code, stdout, output = run_bench(
        "app.bench.upgrade_cost", "--calls", "20", "--rounds", "2", "--warmup", "2",
        "--idle-seconds", "0.2",
    )  # fmt: skip
    assert code == 0, output
    rounds = [line for line in stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2, output
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["calls_per_round"] == 20
    assert summary["unit"] == "cpu_us"
    assert summary["gateway_per_call"] > 0, output
