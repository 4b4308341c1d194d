"""Authenticator with a real Redis: nonce replay across gateway instances, outcomes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.redis import keys
from app.redis.embedded import free_port
from app.security.authenticator import Authenticator
from app.security.integrations import Integration
from app.security.nonces import NonceCache, NonceStoreUnavailable
from app.security.signature import Outcome, SignatureVerifier, sign_request
from tests.unit.security.vectors import (
    API_KEY,
    AUTHORITY,
    CORRELATION,
    ORG,
    OTHER_SECRET,
    SECRET,
    SESSION,
    TARGET,
    integration,
)


def upgrade_headers(
    *,
    secret: str = SECRET,
    authority: str = AUTHORITY,
    target: str = TARGET,
    signed: bool = True,
    created: int | None = None,
    nonce: str | None = None,
) -> list[tuple[bytes, bytes]]:
    """Raw header pairs as an ASGI server hands them over."""
    pairs = [
        (b"host", authority.encode()),
        (b"upgrade", b"websocket"),
        (b"audiohook-organization-id", ORG.encode()),
        (b"audiohook-session-id", SESSION.encode()),
        (b"audiohook-correlation-id", CORRELATION.encode()),
        (b"x-api-key", API_KEY.encode()),
    ]
    if signed:
        signature = sign_request(
            api_key=API_KEY,
            client_secret_b64=secret,
            request_target=target,
            authority=authority,
            organization_id=ORG,
            session_id=SESSION,
            correlation_id=CORRELATION,
            created=created,
            nonce=nonce,
        )
        pairs += [(name.lower().encode(), value.encode()) for name, value in signature.items()]
    return pairs


def make_authenticator(
    client: redis.asyncio.Redis, *integrations: Integration, public_authority: str | None = None
) -> Authenticator:
    by_key = {i.api_key: i for i in integrations} or {API_KEY: integration()}
    return Authenticator(
        SignatureVerifier(by_key.get), NonceCache(client), public_authority=public_authority
    )


@pytest.fixture
async def second_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_nonce_claim_is_once_only_with_a_ttl(redis_client: redis.asyncio.Redis) -> None:
    cache = NonceCache(redis_client, margin_seconds=3)
    now = time.time()
    assert await cache.claim("n" * 24, now + 7, now) is True
    assert await cache.claim("n" * 24, now + 7, now) is False
    assert await cache.claim("m" * 24, now + 7, now) is True
    ttl = await redis_client.ttl(keys.nonce_key("n" * 24))
    assert 9 <= ttl <= 10  # the rest of the acceptance window (7 s) plus the margin (3 s)
    assert cache.ttl_seconds(now - 100, now) == 1


async def test_signed_request_is_accepted_once(redis_client: redis.asyncio.Redis) -> None:
    auth = make_authenticator(redis_client)
    headers = upgrade_headers()
    first = await auth.authenticate(headers, TARGET.encode(), b"", None, time.time())
    assert (first.ok, first.outcome, first.metric_label) == (True, Outcome.VERIFIED, "verified")
    assert first.integration is not None
    assert first.integration.api_key == API_KEY

    replay = await auth.authenticate(headers, TARGET.encode(), b"", None, time.time())
    assert (replay.ok, replay.reason, replay.metric_label) == (
        False,
        "replayed nonce",
        "replayed_nonce",
    )
    assert replay.integration is None


async def test_nonce_is_remembered_for_the_whole_acceptance_window(
    redis_client: redis.asyncio.Redis,
) -> None:
    auth = make_authenticator(redis_client)  # max age 10 s, clock skew 3 s
    created, nonce = int(time.time()), "window-test-nonce-0123456789"
    headers = upgrade_headers(created=created, nonce=nonce)
    claimed_at = time.time()
    assert (await auth.authenticate(headers, TARGET, "", None, claimed_at)).ok
    key_expires_at = time.time() + await redis_client.pttl(keys.nonce_key(nonce)) / 1000
    last_accepted = created + 10 + 3
    # At the window's last instant the signature still verifies, so only the nonce stops it...
    replay = await auth.authenticate(headers, TARGET, "", None, last_accepted)
    assert replay.metric_label == "replayed_nonce"
    expired = await auth.authenticate(headers, TARGET, "", None, last_accepted + 0.001)
    assert expired.metric_label == "auth_expired"
    # ... and Redis keeps the nonce until then, plus the skew for other replicas' clocks
    # (less Redis' millisecond resolution).
    assert key_expires_at >= last_accepted + 3 - 0.002


async def test_replay_is_refused_by_another_gateway_sharing_redis(
    redis_client: redis.asyncio.Redis, second_client: redis.asyncio.Redis
) -> None:
    gateway_a = make_authenticator(redis_client)
    gateway_b = make_authenticator(second_client)
    headers = upgrade_headers()
    assert (await gateway_a.authenticate(headers, TARGET, "", None, time.time())).ok
    replay = await gateway_b.authenticate(headers, TARGET, "", None, time.time())
    assert not replay.ok
    assert replay.metric_label == "replayed_nonce"
    # a fresh signature (new nonce) is fine on either
    assert (await gateway_b.authenticate(upgrade_headers(), TARGET, "", None, time.time())).ok


async def test_failed_verification_does_not_burn_the_nonce(
    redis_client: redis.asyncio.Redis,
) -> None:
    auth = make_authenticator(redis_client)
    headers = upgrade_headers()
    wrong_target = await auth.authenticate(headers, "/elsewhere", "", None, time.time())
    assert (wrong_target.ok, wrong_target.outcome, wrong_target.metric_label) == (
        False,
        Outcome.FAILED,
        "auth_failed",
    )
    assert await redis_client.dbsize() == 0
    assert (await auth.authenticate(headers, TARGET, "", None, time.time())).ok


@pytest.mark.parametrize(
    ("now_offset", "outcome", "label"),
    [(60, Outcome.EXPIRED, "auth_expired"), (-60, Outcome.PRECONDITION, "auth_precondition")],
)
async def test_failure_labels(
    redis_client: redis.asyncio.Redis, now_offset: float, outcome: Outcome, label: str
) -> None:
    auth = make_authenticator(redis_client)
    decision = await auth.authenticate(
        upgrade_headers(), TARGET, "", None, time.time() + now_offset
    )
    assert (decision.ok, decision.outcome, decision.metric_label) == (False, outcome, label)


async def test_wrong_secret_and_rotation(redis_client: redis.asyncio.Redis) -> None:
    auth = make_authenticator(redis_client, integration(secrets=(SECRET, OTHER_SECRET)))
    for secret in (SECRET, OTHER_SECRET):
        assert (
            await auth.authenticate(upgrade_headers(secret=secret), TARGET, "", None, time.time())
        ).ok
    single = make_authenticator(redis_client, integration(secrets=(OTHER_SECRET,)))
    refused = await single.authenticate(upgrade_headers(), TARGET, "", None, time.time())
    assert (refused.ok, refused.metric_label) == (False, "auth_failed")


async def test_unsigned(redis_client: redis.asyncio.Redis) -> None:
    open_integration = make_authenticator(redis_client, integration(secrets=()))
    decision = await open_integration.authenticate(
        upgrade_headers(signed=False), TARGET, "", None, time.time()
    )
    assert (decision.ok, decision.outcome, decision.metric_label) == (
        True,
        Outcome.UNSIGNED,
        "unsigned",
    )
    assert await redis_client.dbsize() == 0
    strict = make_authenticator(redis_client)
    refused = await strict.authenticate(
        upgrade_headers(signed=False), TARGET, "", None, time.time()
    )
    assert (refused.ok, refused.metric_label) == (False, "auth_unsigned")


async def test_authority_from_host_argument_header_or_setting(
    redis_client: redis.asyncio.Redis,
) -> None:
    auth = make_authenticator(redis_client)
    # Host as passed by the transport wins over the header list; it is lower-cased
    headers = upgrade_headers()
    ok = await auth.authenticate(headers, TARGET, "", "AudioHook.Example.com", time.time())
    assert ok.ok
    bad = await auth.authenticate(upgrade_headers(), TARGET, "", "internal:8080", time.time())
    assert not bad.ok
    # a proxy rewrote Host: the configured public authority is verified instead
    rewritten = [(n, b"internal:8080" if n == b"host" else v) for n, v in upgrade_headers()]
    behind_proxy = make_authenticator(redis_client, public_authority="AUDIOHOOK.example.com")
    assert (await behind_proxy.authenticate(rewritten, TARGET, "", None, time.time())).ok


async def test_mapping_headers_are_accepted(redis_client: redis.asyncio.Redis) -> None:
    auth = make_authenticator(redis_client)
    mapping = {k.decode(): v.decode() for k, v in upgrade_headers()}
    assert (await auth.authenticate(mapping, TARGET, "", None, time.time())).ok


async def test_unreachable_redis_raises_a_dedicated_error() -> None:
    # Nothing listens on this loopback port: a real "connection refused", without retries.
    dead = redis.asyncio.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        auth = make_authenticator(dead)
        with pytest.raises(NonceStoreUnavailable):
            await auth.authenticate(upgrade_headers(), TARGET, "", None, time.time())
        # failures that never reach Redis are still answered
        decision = await auth.authenticate(upgrade_headers(), "/x", "", None, time.time())
        assert not decision.ok
    finally:
        await dead.aclose()
