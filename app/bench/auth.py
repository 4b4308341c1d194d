"""Authentication cost per connection, and the minimum failure delay as the transport applies it.

    python -m app.bench.auth [--requests 2000] [--min-delay 0.5] [--failures 10]

1. Signature verification alone (pure CPU): µs per connection over N distinct signed requests.
2. The full authenticator (verification + nonce claim in a real local Redis): µs per connection.
3. Answer times with the minimum failure delay applied the way the transport applies it
   (failures wait until `min delay` after the request arrived; successes are answered at once),
   for each failure kind, run concurrently.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import statistics
import time
import uuid
from collections.abc import Callable

import redis.asyncio

from app.config import load_settings
from app.security.authenticator import AuthDecision, Authenticator, wait_min_failure_delay
from app.security.integrations import Integration, IntegrationRegistry
from app.security.nonces import NonceCache
from app.security.signature import (
    SignatureVerifier,
    SignedRequest,
    collect_headers,
    sign_request,
)
from app.streams.embedded_redis import EmbeddedRedis

TARGET = "/api/v1/audiohook/ws"
AUTHORITY = "audiohook.example.com"
HeaderPairs = list[tuple[str, str]]


def _secret() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def signed_pairs(api_key: str, secret: str, *, created: int | None = None) -> HeaderPairs:
    org, session, correlation = (str(uuid.uuid4()) for _ in range(3))
    signature = sign_request(
        api_key=api_key,
        client_secret_b64=secret,
        request_target=TARGET,
        authority=AUTHORITY,
        organization_id=org,
        session_id=session,
        correlation_id=correlation,
        created=created,
    )
    return [
        ("host", AUTHORITY),
        ("audiohook-organization-id", org),
        ("audiohook-session-id", session),
        ("audiohook-correlation-id", correlation),
        ("x-api-key", api_key),
        ("signature-input", signature["Signature-Input"]),
        ("signature", signature["Signature"]),
    ]


def percentiles_us(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1e6
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6
    return f"p50 {p50:8.1f} µs   p99 {p99:8.1f} µs   (n={len(ordered)})"


def bench_verify(integration: Integration, secret: str, requests: int) -> None:
    verifier = SignatureVerifier({integration.api_key: integration}.get)
    prepared = [
        SignedRequest(TARGET, AUTHORITY, collect_headers(signed_pairs(integration.api_key, secret)))
        for _ in range(requests)
    ]
    samples = []
    for request in prepared:
        start = time.perf_counter()
        result = verifier.verify(request, time.time())
        samples.append(time.perf_counter() - start)
        assert result.accepted, result.reason
    print(f"verify (pure)                      {percentiles_us(samples)}")
    unknown = [
        SignedRequest(TARGET, AUTHORITY, collect_headers(signed_pairs("unknown-key", secret)))
        for _ in range(requests)
    ]
    samples = []
    for request in unknown:
        start = time.perf_counter()
        verifier.verify(request, time.time())
        samples.append(time.perf_counter() - start)
    print(f"verify (unknown key, dummy HMAC)   {percentiles_us(samples)}")


async def answer(
    auth: Authenticator, pairs: HeaderPairs, min_delay: float
) -> tuple[AuthDecision, float]:
    """What the transport does: authenticate, then hold a failure until the minimum delay."""
    started = time.monotonic()
    decision = await auth.authenticate(pairs, TARGET, "", None, time.time())
    if not decision.ok:
        await wait_min_failure_delay(started, min_delay)
    return decision, time.monotonic() - started


async def bench_authenticator(
    auth: Authenticator, api_key: str, secret: str, requests: int
) -> None:
    prepared = [signed_pairs(api_key, secret) for _ in range(requests)]
    samples = []
    for pairs in prepared:
        decision, elapsed = await answer(auth, pairs, 0.0)
        assert decision.ok, decision.reason
        samples.append(elapsed)
    print(f"authenticate (+ Redis SET NX)      {percentiles_us(samples)}")


async def bench_delays(
    auth: Authenticator, api_key: str, secret: str, min_delay: float, per_kind: int
) -> bool:
    """All failures start together and wait out their delay; meanwhile successes are
    answered one after another, showing that pending failures hold nothing up."""
    replayed = signed_pairs(api_key, secret)
    await auth.authenticate(replayed, TARGET, "", None, time.time())
    failures: dict[str, Callable[[], HeaderPairs]] = {
        "wrong secret": lambda: signed_pairs(api_key, _secret()),
        "unknown key": lambda: signed_pairs("unknown-key", secret),
        "expired": lambda: signed_pairs(api_key, secret, created=int(time.time()) - 60),
        "malformed": lambda: [*signed_pairs(api_key, secret)[:-1], ("signature", "sig1=:x")],
        "replayed nonce": lambda: replayed,
    }
    jobs = [
        (kind, asyncio.create_task(answer(auth, make(), min_delay)))
        for kind, make in failures.items()
        for _ in range(per_kind)
    ]
    successes = [
        await answer(auth, signed_pairs(api_key, secret), min_delay) for _ in range(per_kind)
    ]
    outcomes: dict[str, list[tuple[AuthDecision, float]]] = {"success": successes}
    for kind, task in jobs:
        outcomes.setdefault(kind, []).append(await task)
    print(f"\nanswer time, minimum failure delay {min_delay:.3f} s ({per_kind} requests each)")
    all_good = True
    for kind, results in outcomes.items():
        times = [elapsed for _, elapsed in results]
        oks = {decision.ok for decision, _ in results}
        if kind == "success":
            good = oks == {True} and max(times) < min_delay
            verdict = "not delayed" if good else "UNEXPECTED"
        else:
            good = oks == {False} and min(times) >= min_delay
            verdict = ">= minimum delay" if good else "UNEXPECTED"
        all_good &= good
        low, high = min(times) * 1e3, max(times) * 1e3
        print(f"  {kind:15s} min {low:8.2f} ms   max {high:8.2f} ms   {verdict}")
    return all_good


async def main_async(requests: int, min_delay: float, per_kind: int) -> int:
    secret = _secret()
    integration = Integration(name="bench", api_key="bench-key", client_secrets=[secret])
    print(f"{requests} signed requests per measurement\n")
    bench_verify(integration, secret, requests)
    with EmbeddedRedis() as server:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            registry = IntegrationRegistry([integration])
            auth = Authenticator(SignatureVerifier(registry.get), NonceCache(client))
            await bench_authenticator(auth, integration.api_key, secret, requests)
            ok = await bench_delays(auth, integration.api_key, secret, min_delay, per_kind)
        finally:
            await client.aclose()
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--min-delay",
        type=float,
        default=load_settings().auth_min_failure_delay_seconds,
        help="minimum failure delay in seconds (default: the configured one)",
    )
    parser.add_argument("--failures", type=int, default=10, help="requests per failure kind")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main_async(args.requests, args.min_delay, args.failures)))


if __name__ == "__main__":
    main()
