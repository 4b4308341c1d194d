"""Connection security through the real gateway (issue 3): every authentication failure is
answered with `disconnect` unauthorized and a generic info, no sooner than the minimum
delay, counted by cause and logged without secrets; organization checks; unsigned access;
secret rotation; HTTP 401 mode; replay across two gateway processes sharing one Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest
import redis.asyncio

from app.client.upgrade import Endpoint
from app.redis import keys
from app.redis.embedded import EmbeddedRedis
from app.security.signature import REQUIRED_COMPONENTS
from tests.integration.gateway.helpers import (
    AUTH_MIN_FAILURE_DELAY,
    DISABLED_KEY,
    DISABLED_SECRET,
    RESTRICTED_KEY,
    RESTRICTED_ORG,
    RESTRICTED_SECRET,
    ROTATING_KEY,
    ROTATING_NEW_SECRET,
    ROTATING_OLD_SECRET,
    UNSIGNED_KEY,
    events_of,
    running_gateway,
    secret,
    session_log_text,
    wait_for_log,
)
from tests.integration.resilience.wire import WireClient
from tests.support.gateway_process import (
    TEST_API_KEY,
    TEST_CLIENT_SECRET,
    TEST_ORG_ID,
    GatewayProcess,
)
from tests.support.metrics import REJECTED, MetricDelta, metric_value
from tests.support.raw_client import (
    RawClient,
    UpgradeRequest,
    custom_signature_headers,
    fresh_nonce,
    new_id,
)

# What a client is told on any authentication failure: nothing about which check failed.
GENERIC_INFO = "Unauthorized"
OTHER_ORG = "0f5e8a4c-9d1b-4e2a-8c3f-7a6b5d4e3f21"


def _custom(
    uri: str,
    params: Callable[[int, str], list[tuple[str, str | int]]],
    components: str | None = None,
) -> UpgradeRequest:
    """A request whose signature has hand-made parameters (still MACed with the right secret)."""
    request = RawClient.request(uri, client_secret=None)
    created = int(time.time())
    signature = custom_signature_headers(
        Endpoint.parse(uri),
        request.headers,
        TEST_CLIENT_SECRET,
        params(created, fresh_nonce()),
        components=REQUIRED_COMPONENTS if components is None else tuple(components.split()),
    )
    request.headers |= signature
    return request


def _params(
    keyid: str = TEST_API_KEY, alg: str = "hmac-sha256"
) -> Callable[[int, str], list[tuple[str, str | int]]]:
    def build(created: int, nonce: str) -> list[tuple[str, str | int]]:
        return [
            ("keyid", keyid),
            ("nonce", nonce),
            ("alg", alg),
            ("created", created),
            ("expires", created + 30),
        ]

    return build


@dataclass(frozen=True)
class Failure:
    build: Callable[[str], UpgradeRequest]
    cause: str  # audiohook_connections_rejected_total{cause}
    reason: str  # in the log line's reason


FAILURES: dict[str, Failure] = {
    "unknown API key": Failure(
        lambda uri: RawClient.request(uri, api_key="unknown-key", client_secret=secret("x")),
        "auth_failed",
        "unknown API key",
    ),
    "wrong secret": Failure(
        lambda uri: RawClient.request(uri, client_secret=secret("wrong")),
        "auth_failed",
        "do not match",
    ),
    "header changed after signing": Failure(
        lambda uri: RawClient.request(uri, headers={"Audiohook-Correlation-Id": new_id()}),
        "auth_failed",
        "do not match",
    ),
    "signed for another authority": Failure(
        lambda uri: RawClient.request(uri, authority="audiohook.example.com"),
        "auth_failed",
        "do not match",
    ),
    "disabled integration": Failure(
        lambda uri: RawClient.request(uri, api_key=DISABLED_KEY, client_secret=DISABLED_SECRET),
        "auth_failed",
        "disabled",
    ),
    "signed for an integration without a secret": Failure(
        lambda uri: RawClient.request(uri, api_key=UNSIGNED_KEY, client_secret=secret("x")),
        "auth_failed",
        "no secret",
    ),
    "expired": Failure(
        lambda uri: RawClient.request(uri, created=int(time.time()) - 60),
        "auth_expired",
        "expired",
    ),
    "too old": Failure(
        # Still before `expires`, but created longer ago than the maximum age allows.
        lambda uri: RawClient.request(uri, created=int(time.time()) - 30),
        "auth_expired",
        "too old",
    ),
    "created in the future": Failure(
        lambda uri: RawClient.request(uri, created=int(time.time()) + 60),
        "auth_precondition",
        "future",
    ),
    "short nonce": Failure(
        lambda uri: RawClient.request(uri, nonce="c2hvcnQtbm9uY2U="),
        "auth_precondition",
        "nonce too short",
    ),
    "keyid differs from X-API-KEY": Failure(
        lambda uri: _custom(uri, _params(keyid=ROTATING_KEY)),
        "auth_precondition",
        "keyid",
    ),
    "unsupported algorithm": Failure(
        lambda uri: _custom(uri, _params(alg="hmac-sha512")),
        "auth_unsupported",
        "algorithm",
    ),
    "required component not covered": Failure(
        lambda uri: _custom(
            uri,
            _params(),
            components="@request-target @authority audiohook-organization-id "
            "audiohook-session-id x-api-key",
        ),
        "auth_precondition",
        "not covered",
    ),
    "Signature header missing": Failure(
        lambda uri: RawClient.request(uri, headers={"Signature": None}),
        "auth_invalid",
        "only one of",
    ),
    "malformed Signature-Input": Failure(
        lambda uri: RawClient.request(uri, headers={"Signature-Input": "sig1=((("}),
        "auth_invalid",
        "malformed",
    ),
    "unsigned for an integration with a secret": Failure(
        lambda uri: RawClient.request(uri, client_secret=None),
        "auth_unsigned",
        "requires a signature",
    ),
    "unsigned with an unknown key": Failure(
        lambda uri: RawClient.request(uri, api_key="unknown-key", client_secret=None),
        "auth_unsigned",
        "unknown API key",
    ),
    "X-API-KEY missing": Failure(
        lambda uri: RawClient.request(uri, headers={"X-API-KEY": None}),
        "auth_precondition",
        "X-API-KEY",
    ),
}


async def _expect_unauthorized(client: RawClient, *, clientseq: int | None = None) -> None:
    """`disconnect` unauthorized, generic, no sooner than the minimum delay; then `closed`."""
    disconnect = await client.expect_disconnect("unauthorized", clientseq=clientseq)
    assert disconnect.received_at - client.connect_started_at >= AUTH_MIN_FAILURE_DELAY
    assert disconnect.info in (None, GENERIC_INFO), disconnect.info
    assert not any(message.type == "opened" for message in client.received)
    closed = await client.close("disconnect")
    assert closed.parameters == {}


def _no_secrets_logged(gateway: GatewayProcess, request: UpgradeRequest) -> None:
    text = session_log_text(gateway, request.session_id)
    for name in ("Signature", "Signature-Input"):
        value = request.headers.get(name)
        if value:
            assert value.split("=", 1)[1] not in text
    for value in (TEST_CLIENT_SECRET, ROTATING_OLD_SECRET, ROTATING_NEW_SECRET):
        assert value not in text


@pytest.mark.parametrize("failure", FAILURES)
async def test_each_auth_failure_is_answered_unauthorized_counted_and_logged(
    gateway: GatewayProcess, failure: str
) -> None:
    spec = FAILURES[failure]
    request = spec.build(gateway.ws_url)
    rejected = MetricDelta(gateway, REJECTED, cause=spec.cause)
    async with await RawClient.connect(request) as client:
        await client.send_open()
        await _expect_unauthorized(client)
    assert rejected.delta() == 1
    record = await wait_for_log(
        gateway,
        lambda r: (
            r.get("session_id") == request.session_id
            and r.get("message") == "authentication failed"
        ),
    )
    assert spec.reason.lower() in str(record.get("reason")).lower(), record
    _no_secrets_logged(gateway, request)


async def test_failure_is_signalled_even_before_open(gateway: GatewayProcess) -> None:
    request = RawClient.request(gateway.ws_url, client_secret=secret("wrong"))
    async with await RawClient.connect(request) as client:
        await _expect_unauthorized(client, clientseq=0)


async def test_a_later_open_is_ignored_after_unauthorized(gateway: GatewayProcess) -> None:
    request = RawClient.request(gateway.ws_url, client_secret=secret("wrong"))
    async with await RawClient.connect(request) as client:
        await client.expect_disconnect("unauthorized", clientseq=0)
        await client.send_open()
        await client.expect_silence(0.3)  # no opened, no second disconnect
        await client.close("disconnect")


@pytest.mark.parametrize(
    ("api_key", "client_secret", "org"),
    [
        (TEST_API_KEY, TEST_CLIENT_SECRET, TEST_ORG_ID),
        (ROTATING_KEY, ROTATING_OLD_SECRET, TEST_ORG_ID),
        (ROTATING_KEY, ROTATING_NEW_SECRET, TEST_ORG_ID),
        (UNSIGNED_KEY, None, TEST_ORG_ID),
        (RESTRICTED_KEY, RESTRICTED_SECRET, RESTRICTED_ORG),
    ],
    ids=["signed", "rotation old secret", "rotation new secret", "unsigned allowed", "allowed org"],
)
async def test_valid_credentials_open_a_session(
    gateway: GatewayProcess, api_key: str, client_secret: str | None, org: str
) -> None:
    async with await RawClient.connect(
        gateway.ws_url, api_key=api_key, client_secret=client_secret, organization_id=org
    ) as client:
        await client.open()
        await client.close()
        client.assert_conformant()


@pytest.mark.parametrize(
    ("api_key", "client_secret", "header_org", "open_org"),
    [
        (TEST_API_KEY, TEST_CLIENT_SECRET, TEST_ORG_ID, OTHER_ORG),
        (RESTRICTED_KEY, RESTRICTED_SECRET, OTHER_ORG, OTHER_ORG),
        (RESTRICTED_KEY, RESTRICTED_SECRET, RESTRICTED_ORG, OTHER_ORG),
    ],
    ids=["org header differs from open", "org not allowed", "allowed header, other open org"],
)
async def test_organization_checks(
    gateway: GatewayProcess,
    api_key: str,
    client_secret: str,
    header_org: str,
    open_org: str,
) -> None:
    rejected = MetricDelta(gateway, REJECTED)  # any cause: the label is the gateway's choice
    async with await RawClient.connect(
        gateway.ws_url, api_key=api_key, client_secret=client_secret, organization_id=header_org
    ) as client:
        await client.send_open(organizationId=open_org)
        await _expect_unauthorized(client)
    assert rejected.delta() == 1
    await wait_for_log(
        gateway,
        lambda r: (
            r.get("session_id") == client.session_id
            and "organization" in str(r.get("reason", "")) + str(r.get("info", ""))
        ),
    )


async def test_org_header_missing_is_unauthorized(gateway: GatewayProcess) -> None:
    request = RawClient.request(gateway.ws_url)
    # Signed without the header's value covered is impossible, so sign, then drop it.
    request.headers.pop("Audiohook-Organization-Id")
    async with await RawClient.connect(request) as client:
        await client.send_open()
        await _expect_unauthorized(client)


async def test_replay_on_the_same_gateway_is_rejected(gateway: GatewayProcess) -> None:
    request = RawClient.request(gateway.ws_url)
    async with await RawClient.connect(request) as first:
        await first.open()
        await first.close()
    rejected = MetricDelta(gateway, REJECTED, cause="replayed_nonce")
    async with await RawClient.connect(request) as replay:
        await replay.send_open()
        await _expect_unauthorized(replay)
    assert rejected.delta() == 1


# --- a second replica sharing the Redis ----------------------------------------------------------


@pytest.fixture(scope="module")
def second_replica(
    gateway: GatewayProcess, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Another gateway on the same Redis that verifies the same public authority as `gateway`
    (as replicas behind one ingress do)."""
    authority = Endpoint.parse(gateway.ws_url).authority
    with running_gateway(
        redis_server, tmp_path_factory.mktemp("replica"), {"PUBLIC_AUTHORITY": authority}
    ) as process:
        yield process


async def test_replay_against_another_replica_is_rejected(
    gateway: GatewayProcess, second_replica: GatewayProcess
) -> None:
    # The replica accepts requests signed for the shared authority ...
    fresh = RawClient.request(gateway.ws_url)
    async with await RawClient.connect(replace(fresh, uri=second_replica.ws_url)) as client:
        await client.open()
        await client.close()
    # ... but not the same signed headers once they were used on the first gateway.
    request = RawClient.request(gateway.ws_url)
    async with await RawClient.connect(request) as first:
        await first.open()
        await first.close()
    rejected = MetricDelta(second_replica, REJECTED, cause="replayed_nonce")
    async with await RawClient.connect(replace(request, uri=second_replica.ws_url)) as replay:
        await replay.send_open()
        await _expect_unauthorized(replay)
    assert rejected.delta() == 1
    await wait_for_log(
        second_replica,
        lambda r: r.get("session_id") == request.session_id and r.get("reason") == "replayed nonce",
    )


# --- behind a proxy that changes Host ------------------------------------------------------------

PUBLIC_HOST = "audiohook.test"
PUBLIC_AUTHORITY = f"{PUBLIC_HOST}:8443"


async def _authority_failure(
    gateway: GatewayProcess, headers: dict[str, str], *, client_secret: str = TEST_CLIENT_SECRET
) -> dict[str, object]:
    """Upgrade signed for PUBLIC_AUTHORITY with the given headers (Host as a proxy forwards
    it): the session is refused like any failed signature; returns the log record."""
    session_id = new_id()
    rejected = MetricDelta(gateway, REJECTED, cause="auth_failed")
    client = await WireClient.connect(
        gateway.ws_url,
        session_id=session_id,
        authority=PUBLIC_AUTHORITY,
        client_secret=client_secret,
        headers=headers,
    )
    try:
        await client.send_open()
        disconnect = await client.expect("disconnect")
        assert disconnect["parameters"]["reason"] == "unauthorized"
        assert disconnect["parameters"].get("info") in (None, GENERIC_INFO)
    finally:
        await client.aclose()
    assert rejected.delta() == 1
    return await wait_for_log(
        gateway,
        lambda r: r.get("session_id") == session_id and r.get("message") == "authentication failed",
    )


async def test_port_dropped_by_a_proxy_is_named_in_the_log(gateway: GatewayProcess) -> None:
    # nginx `proxy_set_header Host $host; proxy_set_header X-Forwarded-Port $server_port;`
    record = await _authority_failure(gateway, {"Host": PUBLIC_HOST, "X-Forwarded-Port": "8443"})
    assert str(record["reason"]).startswith(
        f"signed for {PUBLIC_AUTHORITY} but received Host {PUBLIC_HOST}: "
        f"set AUDIOHOOK_PUBLIC_AUTHORITY={PUBLIC_AUTHORITY} or forward Host with its port"
    ), record
    assert record["outcome"] == "FAILED"


async def test_host_rewritten_by_a_proxy_is_named_in_the_log(gateway: GatewayProcess) -> None:
    # nginx's default Host (the upstream's address) with X-Forwarded-Host $http_host
    record = await _authority_failure(
        gateway, {"Host": "127.0.0.1:8080", "X-Forwarded-Host": PUBLIC_AUTHORITY}
    )
    assert str(record["reason"]).startswith(
        f"signed for {PUBLIC_AUTHORITY} but received Host 127.0.0.1:8080"
    ), record


async def test_without_the_secret_there_is_no_authority_diagnosis(
    gateway: GatewayProcess,
) -> None:
    record = await _authority_failure(
        gateway,
        {"Host": PUBLIC_HOST, "X-Forwarded-Port": "8443"},
        client_secret=secret("not the integration's"),
    )
    assert record["reason"] == "signatures do not match"


async def test_a_wrong_public_authority_setting_is_named_in_the_log(
    gateway: GatewayProcess, second_replica: GatewayProcess
) -> None:
    # The replica verifies the first gateway's authority; sign for its own Host instead.
    request = RawClient.request(second_replica.ws_url)
    async with await RawClient.connect(request) as client:
        await client.send_open()
        await _expect_unauthorized(client)
    own = Endpoint.parse(second_replica.ws_url).authority
    configured = Endpoint.parse(gateway.ws_url).authority
    await wait_for_log(
        second_replica,
        lambda r: (
            r.get("session_id") == request.session_id
            and r.get("reason")
            == f"signed for {own} (the Host header) but AUDIOHOOK_PUBLIC_AUTHORITY is "
            f"{configured}: set AUDIOHOOK_PUBLIC_AUTHORITY={own} or unset it"
        ),
    )


# --- HTTP 401 mode ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_401_gateway(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    settings = {"AUTH_FAILURE_RESPONSE": "http_401"}
    with running_gateway(redis_server, tmp_path_factory.mktemp("http401"), settings) as process:
        yield process


@pytest.mark.parametrize("failure", ["wrong secret", "unknown API key", "expired"])
async def test_http_401_mode_refuses_the_upgrade(
    http_401_gateway: GatewayProcess, failure: str
) -> None:
    spec = FAILURES[failure]
    request = spec.build(http_401_gateway.ws_url)
    rejected = MetricDelta(http_401_gateway, REJECTED, cause=spec.cause)
    rejection = await RawClient.rejection(request)
    assert rejection.status == 401
    assert rejection.seconds >= AUTH_MIN_FAILURE_DELAY
    assert rejected.delta() == 1
    await wait_for_log(
        http_401_gateway,
        lambda r: (
            r.get("session_id") == request.session_id
            and r.get("message") == "authentication failed"
        ),
    )


async def test_http_401_mode_accepts_valid_credentials(http_401_gateway: GatewayProcess) -> None:
    async with await RawClient.connect(http_401_gateway.ws_url) as client:
        await client.open()
        await client.close()
        client.assert_conformant()


async def test_rejected_sessions_leave_nothing_behind(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    """No stream, no lifecycle event, and the live-session gauge back where it was."""
    requests = [
        FAILURES["wrong secret"].build(gateway.ws_url),
        FAILURES["unsigned for an integration with a secret"].build(gateway.ws_url),
    ]
    for request in requests:
        async with await RawClient.connect(request) as client:
            await client.send_open()
            await _expect_unauthorized(client)
    async with await RawClient.connect(gateway.ws_url) as mismatch:
        await mismatch.send_open(organizationId=OTHER_ORG)
        await mismatch.expect_disconnect("unauthorized")
        assert metric_value(gateway, "audiohook_sessions_active") >= 1  # the gauge is live
        await mismatch.close("disconnect")
    session_ids = [request.session_id for request in requests] + [mismatch.session_id]
    async with asyncio.timeout(5):
        while metric_value(gateway, "audiohook_sessions_active") != 0:
            await asyncio.sleep(0.05)
    assert await gateway_redis.exists(*(keys.audio_stream(sid) for sid in session_ids)) == 0
    for session_id in session_ids:
        assert await events_of(gateway_redis, session_id) == []


async def test_an_unauthenticated_client_cannot_move_metrics_or_logs(
    gateway: GatewayProcess,
) -> None:
    """Its `error` and `discarded` messages, before and after `disconnect` unauthorized, are
    ignored: no client_errors series, no log line carrying its text."""
    errors = MetricDelta(gateway, "audiohook_client_errors_total")
    request = RawClient.request(gateway.ws_url, client_secret=secret("wrong"))
    async with await RawClient.connect(request) as client:
        for code in (4242, 4343):
            await client.send("error", {"code": code, "message": f"flood-{code}"})
        await client.send("discarded", {"start": "PT0S", "discarded": "PT1S"})
        await client.expect_disconnect("unauthorized")
        await client.send("error", {"code": 4444, "message": "flood-4444"})
        await client.close("disconnect")
    assert errors.delta() == 0
    assert "flood-" not in session_log_text(gateway, client.session_id)


async def test_an_authenticated_client_error_code_outside_the_protocol_is_other(
    gateway: GatewayProcess,
) -> None:
    other = MetricDelta(gateway, "audiohook_client_errors_total", code="other")
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.send("error", {"code": 4242, "message": "custom"})
        await client.close()
    assert other.delta() == 1
    assert metric_value(gateway, "audiohook_client_errors_total", code="4242") == 0


async def test_the_minimum_delay_holds_while_a_pong_is_being_sent(gateway: GatewayProcess) -> None:
    """A ping just before an `open` with the wrong organization: the pong goes out at once,
    the unauthorized `disconnect` queued behind it still waits for the minimum delay."""
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.send("ping", {})
        await client.send_open(organizationId=OTHER_ORG)
        pong = await client.expect("pong", clientseq=1)
        assert pong.type == "pong"
        await _expect_unauthorized(client)
