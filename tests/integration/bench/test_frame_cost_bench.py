"""`python -m app.bench.frame_cost`: calls kept open while their frames arrive, on a gateway it
starts itself, and the gateway's CPU per frame read from the process."""

from __future__ import annotations

import json

from tests.integration.bench.support import run_bench


def test_frame_cost_bench_reports_cpu_per_frame() -> None:
    code, stdout, output = run_bench(
        "app.bench.frame_cost", "--calls", "10", "--frames", "10", "--rounds", "2",
        "--idle-seconds", "0.5",
    )  # fmt: skip
    assert code == 0, output
    rounds = [line for line in stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2, output
    assert all("100 frames" in line for line in rounds), output  # each round waited for all
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["frames_per_round"] == 100
    assert summary["unit"] == "cpu_us"
    assert summary["gateway_per_frame"] > 0, output
