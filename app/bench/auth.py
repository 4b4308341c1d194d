"""Authentication cost per connection, and the minimum failure delay measured on a real gateway.

    python -m app.bench.auth [--requests 2000] [--connects 20] [--min-delay 0.5]

1. Signature verification alone (pure CPU): µs per request over N distinct signed requests.
2. The full authenticator (verification + nonce claim in a real local Redis): µs per request.
3. A gateway process started here on loopback (`audiohook-gateway serve` with a Redis of its
   own): --connects signed connections, timed from the TCP connect to `opened`, once alone
   and once while failed connections wait out their delay; and --connects failures of each
   kind (wrong secret, unknown key, expired, replayed nonce) all at once, timed from the TCP
   connect to `disconnect` unauthorized. p50 / p99 / min per kind and a verdict: every failure
   answered no sooner than the minimum delay, every success well before it (p99 below half of
   it). Exit status 1 when a verdict fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import secrets
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from app.bench.spawn import BENCH_API_KEY, Cores, SpawnedStack
from app.client.session import Participant, media_offers
from app.client.upgrade import Endpoint, upgrade_headers
from app.config import load_settings
from app.protocol.messages import encode_client_message
from app.redis.embedded import EmbeddedRedis
from app.security.authenticator import Authenticator
from app.security.integrations import Integration, IntegrationRegistry
from app.security.nonces import NonceCache
from app.security.signature import (
    SignatureVerifier,
    SignedRequest,
    collect_headers,
    sign_request,
)

TARGET = "/api/v1/audiohook/ws"
AUTHORITY = "audiohook.example.com"
ANSWER_TIMEOUT = 10.0
HeaderPairs = list[tuple[str, str]]


def _secret() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


# --- 1 and 2: verification cost in process ---------------------------------------------------


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


async def bench_authenticator(
    auth: Authenticator, api_key: str, secret: str, requests: int
) -> None:
    prepared = [signed_pairs(api_key, secret) for _ in range(requests)]
    samples = []
    for pairs in prepared:
        start = time.perf_counter()
        decision = await auth.authenticate(pairs, TARGET, "", None, time.time())
        samples.append(time.perf_counter() - start)
        assert decision.ok, decision.reason
    print(f"authenticate (+ Redis SET NX)      {percentiles_us(samples)}")


async def bench_in_process(requests: int) -> None:
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
        finally:
            await client.aclose()


# --- 3: answer times of a real gateway ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """One upgrade request as Genesys would send it, and the `open` that follows it."""

    headers: dict[str, str]
    session_id: str
    organization_id: str

    @classmethod
    def signed(
        cls, endpoint: Endpoint, api_key: str, secret: str, *, created: int | None = None
    ) -> Attempt:
        session_id, organization_id = str(uuid.uuid4()), str(uuid.uuid4())
        headers = upgrade_headers(
            endpoint,
            api_key=api_key,
            client_secret=secret,
            organization_id=organization_id,
            session_id=session_id,
            correlation_id=str(uuid.uuid4()),
            created=created,
        )
        return cls(headers, session_id, organization_id)

    def open_message(self) -> str:
        parameters = {
            "organizationId": self.organization_id,
            "conversationId": str(uuid.uuid4()),
            "participant": Participant().to_parameter(),
            "media": media_offers(),
            "language": "en-US",
        }
        return encode_client_message("open", self.session_id, 1, 0, 0, parameters)


@dataclass(frozen=True, slots=True)
class Answer:
    kind: str  # the server message that answered the `open`: "opened", "disconnect", ...
    reason: str | None  # disconnect reason
    seconds: float  # from the start of the TCP connect to that message

    @classmethod
    def of(cls, message: dict[str, object], seconds: float) -> Answer:
        parameters = message.get("parameters")
        reason = parameters.get("reason") if isinstance(parameters, dict) else None
        return cls(str(message.get("type")), None if reason is None else str(reason), seconds)


async def _next_message(websocket: ClientConnection) -> dict[str, object]:
    while True:
        raw = await websocket.recv()
        if isinstance(raw, str):
            message = orjson.loads(raw)
            if isinstance(message, dict):
                return message


async def connect_and_open(
    uri: str, attempt: Attempt, on_upgraded: Callable[[], None] | None = None
) -> Answer:
    """Dial, send `open` right away (as Genesys does) and time the gateway's answer; then end
    the session politely (`close`, wait for `closed`). Never raises: a refused upgrade or a
    broken connection is an Answer of its own kind."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT):
            websocket = await connect(
                uri,
                additional_headers=attempt.headers,
                compression=None,
                proxy=None,
                open_timeout=None,
                ping_interval=None,
                close_timeout=2.0,
            )
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        return Answer(f"upgrade failed ({type(exc).__name__})", None, time.perf_counter() - started)
    try:
        if on_upgraded is not None:
            on_upgraded()
        await websocket.send(attempt.open_message())
        async with asyncio.timeout(ANSWER_TIMEOUT):
            message = await _next_message(websocket)
        answer = Answer.of(message, time.perf_counter() - started)
        serverseq = message.get("seq")
        close = encode_client_message(
            "close", attempt.session_id, 2, serverseq if isinstance(serverseq, int) else 0, 0,
            {"reason": "end"},
        )  # fmt: skip
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            await websocket.send(close)
            async with asyncio.timeout(2.0):
                while (await _next_message(websocket)).get("type") != "closed":
                    pass
        return answer
    except (ConnectionClosed, TimeoutError) as exc:
        return Answer(f"no answer ({type(exc).__name__})", None, time.perf_counter() - started)
    finally:
        await websocket.close()


def _ms_row(seconds: Sequence[float]) -> str:
    ordered = sorted(seconds)
    p50 = statistics.median(ordered) * 1e3
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3
    return f"p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   min {ordered[0] * 1e3:8.2f} ms"


def judge(kind: str, answers: Sequence[Answer], min_delay: float) -> tuple[bool, str]:
    """Successes: all `opened`, p99 below half the minimum delay. Failures: all `disconnect`
    unauthorized, none sooner than the minimum delay."""
    seconds = [answer.seconds for answer in answers]
    if kind.startswith("success"):
        if any(answer.kind != "opened" for answer in answers):
            return False, "NOT OPENED: " + ", ".join(sorted({a.kind for a in answers}))
        p99 = sorted(seconds)[min(len(seconds) - 1, int(len(seconds) * 0.99))]
        good = p99 < min_delay / 2
        return good, "not delayed" if good else f"DELAYED (p99 >= {min_delay / 2:.3f} s)"
    if any((answer.kind, answer.reason) != ("disconnect", "unauthorized") for answer in answers):
        got = sorted({f"{a.kind} {a.reason or ''}".strip() for a in answers})
        return False, "NOT REFUSED: " + ", ".join(got)
    good = min(seconds) >= min_delay
    return good, ">= minimum delay" if good else "ANSWERED TOO SOON"


async def bench_gateway(stack: SpawnedStack, connects: int, min_delay: float) -> bool:
    endpoint = Endpoint.parse(stack.uri)
    secret = stack.client_secret

    def good() -> Attempt:
        return Attempt.signed(endpoint, BENCH_API_KEY, secret)

    async def sequential(attempts: Sequence[Attempt]) -> list[Answer]:
        return [await connect_and_open(stack.uri, attempt) for attempt in attempts]

    await sequential([good() for _ in range(3)])  # warm-up: imports, pools, first connections
    results: dict[str, list[Answer]] = {
        "success": await sequential([good() for _ in range(connects)])
    }

    replayed = good()
    first_use = await connect_and_open(stack.uri, replayed)
    if first_use.kind != "opened":
        print(f"the signature to replay was refused on first use: {first_use}")
        return False
    failures: dict[str, list[Attempt]] = {
        "wrong secret": [
            Attempt.signed(endpoint, BENCH_API_KEY, _secret()) for _ in range(connects)
        ],
        "unknown key": [Attempt.signed(endpoint, "unknown-key", secret) for _ in range(connects)],
        "expired": [
            Attempt.signed(endpoint, BENCH_API_KEY, secret, created=int(time.time()) - 60)
            for _ in range(connects)
        ],
        "replayed nonce": [replayed] * connects,
    }
    # Every failure at once; once they are all connected and waiting out their delay,
    # successes one after another: the pending failures must hold nothing up.
    total, upgraded = sum(map(len, failures.values())), 0
    all_upgraded = asyncio.Event()

    def count_upgrade() -> None:
        nonlocal upgraded
        upgraded += 1
        if upgraded == total:
            all_upgraded.set()

    pending = {
        kind: [asyncio.create_task(connect_and_open(stack.uri, a, count_upgrade)) for a in attempts]
        for kind, attempts in failures.items()
    }
    with contextlib.suppress(TimeoutError):  # a failed upgrade shows in its verdict below
        await asyncio.wait_for(all_upgraded.wait(), ANSWER_TIMEOUT)
    results["success (failures pending)"] = await sequential([good() for _ in range(connects)])
    for kind, tasks in pending.items():
        results[kind] = list(await asyncio.gather(*tasks))

    assert stack.gateway is not None
    print(
        f"\ngateway on 127.0.0.1 (pid {stack.gateway.pid}), minimum failure delay "
        f"{min_delay:.3f} s, {connects} connections per kind\n"
        "time from TCP connect to `opened` (success) or `disconnect` unauthorized (failure)"
    )
    all_good = True
    for kind, answers in results.items():
        ok, verdict = judge(kind, answers, min_delay)
        all_good &= ok
        print(f"  {kind:27s} {_ms_row([a.seconds for a in answers])}   {verdict}")
    return all_good


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="in-process requests")
    parser.add_argument(
        "--connects",
        type=int,
        default=20,
        help="gateway connections per kind (success, each failure)",
    )
    parser.add_argument(
        "--min-delay",
        type=float,
        default=load_settings().auth_min_failure_delay_seconds,
        help="minimum failure delay the gateway is started with (default: the configured one)",
    )
    args = parser.parse_args()
    asyncio.run(bench_in_process(args.requests))
    stack = SpawnedStack(
        Cores.plan(pin=False), {"AUTH_MIN_FAILURE_DELAY_SECONDS": str(args.min_delay)}
    ).start()
    try:
        ok = asyncio.run(bench_gateway(stack, args.connects, args.min_delay))
    finally:
        stack.stop()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
