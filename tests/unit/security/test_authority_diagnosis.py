"""`@authority` behind a proxy (docs/protocol.md §2.7): when a signature fails only because a
proxy dropped the port or rewrote Host, the reason names what was signed and the fix. The
request is refused all the same, and the extra work is a bounded number of HMACs."""

from __future__ import annotations

import time

import pytest
import redis.asyncio

from app.security.authenticator import Authenticator
from app.security.nonces import NonceCache
from app.security.signature import (
    MAX_AUTHORITY_DIAGNOSIS_MACS,
    Outcome,
    SignatureVerifier,
    SignedRequest,
    authority_variants,
    sign_request,
)
from tests.unit.security.vectors import (
    API_KEY,
    CORRELATION,
    CREATED,
    ORG,
    OTHER_SECRET,
    SECRET,
    SESSION,
    TARGET,
    integration,
    signed_headers,
    verifier,
)

NOW = CREATED + 2
PUBLIC = "audiohook.test:8443"


def _request(headers: dict[str, list[str]], authority: str, *variants: str) -> SignedRequest:
    return SignedRequest(
        request_target=TARGET, authority=authority, headers=headers, authority_variants=variants
    )


# --- which variants are tried ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("used", "host", "forwarded_host", "forwarded_port", "expected"),
    [
        # nginx `proxy_set_header Host $host` with X-Forwarded-Port $server_port
        ("audiohook.test", "audiohook.test", [], ["8443"], ("audiohook.test:8443",)),
        # a proxy that adds the default port the client left out
        ("audiohook.test:443", "audiohook.test:443", [], [], ("audiohook.test",)),
        # nginx's default Host ($proxy_host) with X-Forwarded-Host $http_host
        ("10.0.0.5:8080", "10.0.0.5:8080", [PUBLIC], [], (PUBLIC, "10.0.0.5")),
        # X-Forwarded-Host $host (no port) plus X-Forwarded-Port: combined, then as sent
        ("gw:8080", "gw:8080", ["Audiohook.Test, other"], ["8443"], (PUBLIC, "audiohook.test")),
        # a configured public authority: the Host header is the first suspect
        (PUBLIC, "internal:8080", [], [], ("internal:8080", "internal")),
        # nothing else to try; default ports are no hint; junk is ignored
        ("audiohook.test", "audiohook.test", [], ["443"], ()),
        ("audiohook.test", "audiohook.test", ["bad host\x7f"], ["x"], ()),
        ("[::1]:8443", "[::1]:8443", [], [], ("[::1]",)),
        ("[::1]", "[::1]", [], ["8443"], ("[::1]:8443",)),
    ],
)  # fmt: skip
def test_variants_most_likely_first_and_bounded(
    used: str,
    host: str,
    forwarded_host: list[str],
    forwarded_port: list[str],
    expected: tuple[str, ...],
) -> None:
    assert authority_variants(used, host, forwarded_host, forwarded_port) == expected


def test_variants_never_exceed_the_budget() -> None:
    many = authority_variants("gw:1", "gw:1", ["a.test"], ["8443"], limit=10)
    assert len(many) > MAX_AUTHORITY_DIAGNOSIS_MACS
    assert len(authority_variants("gw:1", "gw:1", ["a.test"], ["8443"])) == (
        MAX_AUTHORITY_DIAGNOSIS_MACS
    )


# --- the verifier --------------------------------------------------------------------------------


def test_signature_for_a_variant_is_still_failed_but_names_it() -> None:
    headers = signed_headers(authority=PUBLIC)
    result = verifier(integration()).verify(
        _request(headers, "audiohook.test", "audiohook.test:8443"), NOW
    )
    assert (result.outcome, result.accepted) == (Outcome.FAILED, False)
    assert result.reason == "signatures do not match"
    assert result.signed_authority == PUBLIC
    assert result.integration is None
    assert result.nonce is None


def test_the_same_request_verifies_under_the_right_authority() -> None:
    # Control: the diagnosis above is about the authority alone.
    headers = signed_headers(authority=PUBLIC)
    assert verifier(integration()).verify(_request(headers, PUBLIC), NOW).accepted


def test_wrong_secret_gets_no_diagnosis() -> None:
    headers = signed_headers(authority=PUBLIC, secret=OTHER_SECRET)
    result = verifier(integration()).verify(_request(headers, "audiohook.test", PUBLIC), NOW)
    assert (result.outcome, result.signed_authority) == (Outcome.FAILED, None)


@pytest.mark.parametrize(
    ("known", "enabled", "reason"),
    [(False, True, "unknown API key"), (True, False, "integration disabled")],
)
def test_no_diagnosis_without_a_usable_integration(known: bool, enabled: bool, reason: str) -> None:
    headers = signed_headers(authority=PUBLIC)
    check = verifier(integration(enabled=enabled)) if known else verifier()
    result = check.verify(_request(headers, "audiohook.test", PUBLIC), NOW)
    assert (result.outcome, result.reason, result.signed_authority) == (
        Outcome.FAILED,
        reason,
        None,
    )


def test_diagnosis_stops_after_the_mac_budget() -> None:
    # Signed for the third variant: only the first two are tried, so nothing is named.
    headers = signed_headers(authority="c.test")
    check = verifier(integration())
    assert check.verify(_request(headers, "x.test", "a.test", "b.test", "c.test"), NOW) == (
        check.verify(_request(headers, "x.test"), NOW)
    )
    assert check.verify(_request(headers, "x.test", "a.test", "c.test"), NOW).signed_authority
    # With two secrets (rotation), each variant costs two MACs: only the first one fits.
    rotating = verifier(integration(secrets=(OTHER_SECRET, SECRET)))
    signed_second = _request(headers, "x.test", "a.test", "c.test")
    assert rotating.verify(signed_second, NOW).signed_authority is None
    signed_first = _request(headers, "x.test", "c.test", "a.test")
    assert rotating.verify(signed_first, NOW).signed_authority == "c.test"


# --- the authenticator: the log reason -----------------------------------------------------------


def _pairs(signed_for: str, host: str, **extra: str) -> list[tuple[bytes, bytes]]:
    signature = sign_request(
        api_key=API_KEY,
        client_secret_b64=SECRET,
        request_target=TARGET,
        authority=signed_for,
        organization_id=ORG,
        session_id=SESSION,
        correlation_id=CORRELATION,
    )
    headers = {
        "host": host,
        "audiohook-organization-id": ORG,
        "audiohook-session-id": SESSION,
        "audiohook-correlation-id": CORRELATION,
        "x-api-key": API_KEY,
        **{name.replace("_", "-"): value for name, value in extra.items()},
        **{name.lower(): value for name, value in signature.items()},
    }
    return [(name.encode(), value.encode()) for name, value in headers.items()]


def _authenticator(client: redis.asyncio.Redis, public: str | None = None) -> Authenticator:
    check = SignatureVerifier({API_KEY: integration()}.get)
    return Authenticator(check, NonceCache(client), public_authority=public)


async def test_port_dropped_by_the_proxy_is_named(redis_client: redis.asyncio.Redis) -> None:
    pairs = _pairs(PUBLIC, "audiohook.test", x_forwarded_port="8443")
    decision = await _authenticator(redis_client).authenticate(pairs, TARGET, "", None, time.time())
    assert (decision.ok, decision.outcome, decision.metric_label) == (
        False,
        Outcome.FAILED,
        "auth_failed",
    )
    assert decision.reason.startswith(
        "signed for audiohook.test:8443 but received Host audiohook.test: "
        "set AUDIOHOOK_PUBLIC_AUTHORITY=audiohook.test:8443 or forward Host with its port"
    ), decision.reason
    assert decision.integration is None


async def test_host_rewritten_by_the_proxy_is_named(redis_client: redis.asyncio.Redis) -> None:
    pairs = _pairs(PUBLIC, "10.0.0.5:8080", x_forwarded_host=PUBLIC)
    decision = await _authenticator(redis_client).authenticate(pairs, TARGET, "", None, time.time())
    assert not decision.ok
    assert decision.reason.startswith(
        f"signed for {PUBLIC} but received Host 10.0.0.5:8080: "
        f"set AUDIOHOOK_PUBLIC_AUTHORITY={PUBLIC} or forward the client's Host unchanged"
    ), decision.reason


async def test_wrong_public_authority_setting_is_named(redis_client: redis.asyncio.Redis) -> None:
    pairs = _pairs(PUBLIC, PUBLIC)
    auth = _authenticator(redis_client, public="audiohook.test")
    decision = await auth.authenticate(pairs, TARGET, "", None, time.time())
    assert not decision.ok
    assert decision.reason == (
        f"signed for {PUBLIC} (the Host header) but AUDIOHOOK_PUBLIC_AUTHORITY is "
        f"audiohook.test: set AUDIOHOOK_PUBLIC_AUTHORITY={PUBLIC} or unset it"
    )


async def test_a_diagnosed_failure_does_not_spend_the_nonce(
    redis_client: redis.asyncio.Redis,
) -> None:
    pairs = _pairs(PUBLIC, "audiohook.test", x_forwarded_port="8443")
    now = time.time()
    assert not (await _authenticator(redis_client).authenticate(pairs, TARGET, "", None, now)).ok
    fixed = _authenticator(redis_client, public=PUBLIC)
    assert (await fixed.authenticate(pairs, TARGET, "", None, now)).ok


async def test_plain_mismatch_keeps_the_plain_reason(redis_client: redis.asyncio.Redis) -> None:
    pairs = _pairs("elsewhere.test", "audiohook.test", x_forwarded_port="8443")
    decision = await _authenticator(redis_client).authenticate(pairs, TARGET, "", None, time.time())
    assert (decision.ok, decision.reason) == (False, "signatures do not match")
