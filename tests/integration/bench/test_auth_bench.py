"""`python -m app.bench.auth`: measures a gateway it starts itself; failures wait out the delay."""

from __future__ import annotations

from tests.integration.bench.support import run_bench

FAILURE_KINDS = ("wrong secret", "unknown key", "expired", "replayed nonce")


def test_auth_bench_measures_the_minimum_failure_delay_on_a_real_gateway() -> None:
    _, stdout, output = run_bench(
        "app.bench.auth", "--requests", "20", "--connects", "3", "--min-delay", "0.3"
    )
    rows = {
        line.strip().split("  ")[0]: line
        for line in stdout.splitlines()
        if line.startswith("  ") and " p50 " in line
    }
    assert set(rows) == {"success", "success (failures pending)", *FAILURE_KINDS}, output
    for kind in FAILURE_KINDS:  # every one refused, none sooner than 0.3 s
        assert rows[kind].endswith(">= minimum delay"), output
    for kind in ("success", "success (failures pending)"):  # opened (how fast is not judged)
        assert "NOT OPENED" not in rows[kind], output
    assert "verify (pure)" in output
    assert "authenticate (+ Redis SET NX)" in output
