"""The source-address allowlist through the gateway. Every connection comes from 127.0.0.1;
the allowed ranges are only strings in the configuration (no traffic goes to them)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from app.redis.embedded import EmbeddedRedis
from tests.integration.gateway.helpers import running_gateway, wait_for_log
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import REJECTED, MetricDelta
from tests.support.raw_client import RawClient

ALLOWED = '["10.0.0.0/8"]'


@pytest.fixture(scope="module")
def allowlist_gateway(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    settings = {"IP_ALLOWLIST_ENABLED": "true", "IP_ALLOWLIST_CIDRS": ALLOWED}
    with running_gateway(redis_server, tmp_path_factory.mktemp("allowlist"), settings) as process:
        yield process


@pytest.fixture(scope="module")
def proxied_gateway(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Behind a proxy on 127.0.0.1: the client address comes from X-Forwarded-For."""
    settings = {
        "IP_ALLOWLIST_ENABLED": "true",
        "IP_ALLOWLIST_CIDRS": ALLOWED,
        "TRUSTED_PROXIES": json.dumps(["127.0.0.1/32", "192.168.0.0/16"]),
    }
    with running_gateway(redis_server, tmp_path_factory.mktemp("proxied"), settings) as process:
        yield process


@pytest.mark.parametrize(
    "forwarded_for", [None, "10.1.2.3"], ids=["direct", "forged X-Forwarded-For ignored"]
)
async def test_a_source_outside_the_allowlist_gets_403(
    allowlist_gateway: GatewayProcess, forwarded_for: str | None
) -> None:
    refused = MetricDelta(allowlist_gateway, REJECTED, cause="ip_not_allowed")
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    request = RawClient.request(allowlist_gateway.ws_url, headers=headers)
    rejection = await RawClient.rejection(request)
    assert rejection.status == 403
    assert refused.delta() == 1
    record = await wait_for_log(
        allowlist_gateway,
        lambda r: r.get("session_id") == request.session_id and r.get("status") == 403,
    )
    assert record["client_address"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("forwarded_for", "client_address"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("192.0.2.1, 10.1.2.3", "10.1.2.3"),  # the rightmost hop is the one our proxy saw
        ("10.1.2.3, 192.168.4.5", "10.1.2.3"),  # a second trusted proxy is skipped
    ],
)
async def test_trusted_proxy_forwarded_hop_inside_the_allowlist_is_admitted(
    proxied_gateway: GatewayProcess, forwarded_for: str, client_address: str
) -> None:
    request = RawClient.request(proxied_gateway.ws_url, headers={"X-Forwarded-For": forwarded_for})
    async with await RawClient.connect(request) as client:
        await client.open()
        await client.close()
    record = await wait_for_log(
        proxied_gateway,
        lambda r: r.get("session_id") == request.session_id and "client_address" in r,
    )
    assert record["client_address"] == client_address


@pytest.mark.parametrize(
    ("forwarded_for", "client_address"),
    [
        (None, "127.0.0.1"),  # the proxy itself is not an allowed client
        ("192.0.2.1", "192.0.2.1"),
        ("10.1.2.3, 192.0.2.1", "192.0.2.1"),  # a client cannot prepend an allowed address
        ("not-an-address", "unknown"),
    ],
)
async def test_trusted_proxy_forwarded_hop_outside_the_allowlist_gets_403(
    proxied_gateway: GatewayProcess, forwarded_for: str | None, client_address: str
) -> None:
    refused = MetricDelta(proxied_gateway, REJECTED, cause="ip_not_allowed")
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    request = RawClient.request(proxied_gateway.ws_url, headers=headers)
    rejection = await RawClient.rejection(request)
    assert rejection.status == 403
    assert refused.delta() == 1
    record = await wait_for_log(
        proxied_gateway,
        lambda r: r.get("session_id") == request.session_id and r.get("status") == 403,
    )
    assert record["client_address"] == client_address
