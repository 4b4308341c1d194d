"""`audiohook-gateway bench --hostile`: cheap attack classes with tiny numbers print a table
row per class and one JSON line with every figure."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.bench.support import run_bench

ROW_KEYS = {
    "kind",
    "good_calls",
    "good_calls_ended_early",
    "frames_sent",
    "frames_lost",
    "good_ingest_samples",
    "good_ingest_ms_p50",
    "good_ingest_ms_p99",
    "good_steady_ingest_ms_p99",
    "new_calls",
    "new_calls_failed",
    "new_call_answers",
    "new_open_ms_p50",
    "new_open_ms_p99",
    "gateway_cpu_pct",
    "gateway_cpu_pct_max",
    "gateway_rss_mib_peak",
    "log_bytes",
    "attack_seconds",
    "attack",
    "failures",
}


def hostile(kind: str, *extra: str) -> dict[str, Any]:
    code, stdout, output = run_bench(
        "app.cli", "bench", "--spawn", "--hostile", kind,
        "--sessions", "3", "--attack-seconds", "2", "--new-call-rate", "2", *extra,
    )  # fmt: skip
    assert code == 0, output
    assert "frames lost" in stdout
    assert "log bytes" in stdout
    assert kind in stdout
    summary = json.loads(stdout.strip().splitlines()[-1])  # the one JSON line
    row: dict[str, Any]
    (row,) = summary["hostile"]
    assert set(row) == ROW_KEYS
    assert row["kind"] == kind
    assert row["good_calls"] == 3
    assert isinstance(row["log_bytes"], int)
    assert row["log_bytes"] > 0
    assert isinstance(row["new_calls"], int)
    assert row["new_calls"] >= 1
    assert row["good_ingest_samples"] > 0  # the good calls' frames during the attack
    assert row["good_ingest_ms_p99"] >= row["good_ingest_ms_p50"] > 0
    return row


def test_failed_logins_are_counted_and_good_calls_survive() -> None:
    row = hostile("failed-logins", "--attack-rate", "10")
    attack = row["attack"]
    assert attack["attempts"] > 0
    assert row["good_calls_ended_early"] == 0
    assert row["frames_lost"] == 0


def test_malformed_upgrades_hold_a_few_sockets() -> None:
    row = hostile("malformed-upgrade", "--attack-connections", "3")
    attack = row["attack"]
    assert attack["sockets"] >= 3
    assert row["frames_lost"] == 0


def test_idle_connections_are_held_only_up_to_the_per_source_bound() -> None:
    row = hostile(
        "idle-connections",
        "--attack-connections", "5",
        "--gateway-setting", "MAX_UNFINISHED_REQUESTS_PER_SOURCE=2",
    )  # fmt: skip
    attack = row["attack"]
    # Two are held until the gateway's 10 s request deadline (a third, if one dialled again
    # just before the attack's end had not seen its close by then); the others are closed
    # each time they connect.
    assert 2 <= attack["held_to_end"] <= 3
    assert attack["closed_at_once"] >= 3
    assert row["good_calls_ended_early"] == 0
    assert row["frames_lost"] == 0
