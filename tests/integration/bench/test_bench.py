"""`audiohook-gateway bench --spawn`: a small run completes and finds every frame in Redis."""

from __future__ import annotations

import json

from tests.integration.bench.support import run_bench


def test_bench_spawn_small_run_reports_zero_loss() -> None:
    code, stdout, output = run_bench(
        "app.cli", "bench", "--spawn", "--sessions", "5", "--seconds", "3"
    )
    assert code == 0, output
    lines = stdout.strip().splitlines()
    assert "frames sent / in Redis / lost" in stdout  # the table
    summary = json.loads(lines[-1])  # the one JSON line
    (step,) = summary["steps"]
    assert step["opened"] == 5
    assert step["failed"] == 0
    assert step["frames_sent"] == 5 * 15  # 3 s of 200 ms frames per call
    assert step["frames_in_redis"] == step["frames_sent"]
    assert step["frames_lost"] == 0
    assert step["sessions_short"] == 0
    assert step["ingest_samples"] > 0
    # Where the latency goes: the gateway's own histogram over the window with every call
    # live (read from its metrics listener), and Redis's wait for a core (Linux schedstat).
    assert 0 <= step["gateway_ack_within_10ms_pct"] <= step["gateway_ack_within_20ms_pct"] <= 100
    assert step["redis_cpu_wait_pct"] >= 0
    # The gateway's CPU in units of the generator's (both sampled while every call was live).
    ratio = step["gateway_cpu_pct"] / step["generator_cpu_pct"]
    assert step["gateway_cpu_per_generator_cpu"] == round(ratio, 3)
