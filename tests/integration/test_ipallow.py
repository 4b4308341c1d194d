"""IP allowlist against a loopback stand-in of the Genesys API, with a real Redis as cache."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.redis import keys
from app.redis.embedded import free_port
from app.security.ipallow import GenesysApiConfig, IpAllowlist, RangeList
from tests.support.genesys_api import GenesysApiStandIn

AUDIOHOOK_V4 = "198.51.100.7"
AUDIOHOOK_V6 = "2001:db8:10::1"
EU_AUDIOHOOK = "203.0.113.70"
OTHER_SERVICE = "192.0.2.1"  # a Genesys "api" range, not audiohook


@pytest.fixture
def genesys_api() -> Iterator[GenesysApiStandIn]:
    with GenesysApiStandIn() as stand_in:
        yield stand_in


def config(api: GenesysApiStandIn, **changes: object) -> GenesysApiConfig:
    values: dict[str, object] = {
        "login_base_url": api.base_url,
        "api_base_url": api.base_url,
        "client_id": api.client_id,
        "client_secret": api.client_secret,
        "timeout_seconds": 2.0,
    } | changes
    return GenesysApiConfig(**values)  # type: ignore[arg-type]


def allowlist(
    api: GenesysApiStandIn, client: redis.asyncio.Redis | None, **options: object
) -> IpAllowlist:
    genesys = options.pop("genesys", config(api))
    return IpAllowlist(genesys=genesys, redis_client=client, **options)  # type: ignore[arg-type]


def allows(allow: IpAllowlist, text: str) -> bool:
    return allow.allows(ipaddress.ip_address(text))


async def test_fetch_keeps_only_audiohook_ranges_and_caches_them(
    genesys_api: GenesysApiStandIn, redis_client: redis.asyncio.Redis
) -> None:
    allow = allowlist(genesys_api, redis_client)
    assert not allow.ready
    assert await allow.refresh() is True
    assert allow.ready
    assert genesys_api.token_requests == 1
    assert genesys_api.ranges_requests == 1
    assert allows(allow, AUDIOHOOK_V4)
    assert allows(allow, AUDIOHOOK_V6)
    assert allows(allow, EU_AUDIOHOOK)
    assert not allows(allow, OTHER_SERVICE)
    assert not allows(allow, "100.64.1.1")
    assert allow.list_size == 3
    assert 0 <= allow.list_age_seconds < 60
    raw = await redis_client.get(keys.IP_RANGES_CACHE)
    assert raw is not None
    cached = RangeList.from_json(raw)
    assert (
        set(cached.cidrs)
        == set(allow.genesys_cidrs)
        == {
            "198.51.100.0/24",
            "2001:db8:10::/48",
            "203.0.113.64/26",
        }
    )


async def test_region_filter(genesys_api: GenesysApiStandIn) -> None:
    allow = allowlist(genesys_api, None, genesys=config(genesys_api, regions=("eu-central-1",)))
    assert await allow.refresh()
    assert allow.genesys_cidrs == ("203.0.113.64/26",)
    assert allows(allow, EU_AUDIOHOOK)
    assert not allows(allow, AUDIOHOOK_V4)


async def test_refresh_picks_up_new_ranges(genesys_api: GenesysApiStandIn) -> None:
    allow = allowlist(genesys_api, None)
    assert await allow.refresh()
    genesys_api.entities = [{"cidr": "192.0.2.128/25", "service": "AudioHook", "region": "x"}]
    assert await allow.refresh(force=True)
    assert allows(allow, "192.0.2.200")
    assert not allows(allow, AUDIOHOOK_V4)
    assert allow.refresh_successes == 2


async def test_a_recent_list_from_another_replica_is_shared(
    genesys_api: GenesysApiStandIn, redis_client: redis.asyncio.Redis
) -> None:
    first = allowlist(genesys_api, redis_client)
    assert await first.refresh()
    second = allowlist(genesys_api, redis_client)
    assert await second.refresh()  # adopts the cached list instead of calling the API
    assert genesys_api.ranges_requests == 1
    assert allows(second, AUDIOHOOK_V4)


async def test_api_down_after_restart_uses_the_list_cached_in_redis(
    genesys_api: GenesysApiStandIn, redis_client: redis.asyncio.Redis
) -> None:
    assert await allowlist(genesys_api, redis_client).refresh()
    genesys_api.stop()
    restarted = allowlist(genesys_api, redis_client)
    assert await restarted.refresh(force=True) is False
    assert restarted.refresh_failures == 1
    assert allows(restarted, AUDIOHOOK_V4)
    assert not allows(restarted, OTHER_SERVICE)


@pytest.mark.parametrize(
    "break_api",
    ["error_status", "bad_credentials", "no_audiohook_ranges", "stopped"],
)
async def test_api_failure_keeps_the_last_good_list(
    genesys_api: GenesysApiStandIn, break_api: str
) -> None:
    allow = allowlist(genesys_api, None)
    assert await allow.refresh()
    if break_api == "error_status":
        genesys_api.fail_with = 503
    elif break_api == "bad_credentials":
        genesys_api.client_secret = "rotated"
    elif break_api == "no_audiohook_ranges":
        genesys_api.entities = [{"cidr": "192.0.2.0/24", "service": "api", "region": "x"}]
    else:
        genesys_api.stop()
    assert await allow.refresh(force=True) is False
    assert allow.refresh_failures == 1
    assert allows(allow, AUDIOHOOK_V4)
    assert allows(allow, AUDIOHOOK_V6)


@pytest.mark.parametrize("fail_closed", [True, False])
async def test_api_down_without_any_list(
    genesys_api: GenesysApiStandIn, redis_client: redis.asyncio.Redis, fail_closed: bool
) -> None:
    genesys_api.stop()
    allow = allowlist(
        genesys_api, redis_client, fail_closed=fail_closed, static_cidrs=["192.0.2.0/28"]
    )
    assert await allow.refresh() is False
    assert allows(allow, AUDIOHOOK_V4) is not fail_closed
    assert allows(allow, "192.0.2.3")  # static CIDRs stay allowed
    assert allow.list_age_seconds == float("inf")


async def test_forwarded_for_is_trusted_only_from_configured_proxies(
    genesys_api: GenesysApiStandIn,
) -> None:
    allow = allowlist(genesys_api, None, trusted_proxies=["127.0.0.1/32", "::1/128"])
    assert await allow.refresh()
    # behind the trusted proxy: the rightmost untrusted hop is the client
    assert allow.allows_request("127.0.0.1", [AUDIOHOOK_V4])
    assert allow.allows_request("::1", [f"{OTHER_SERVICE}, {AUDIOHOOK_V6}"])
    assert not allow.allows_request("127.0.0.1", [f"{AUDIOHOOK_V4}, {OTHER_SERVICE}"])
    # a direct, untrusted peer cannot borrow an allowed address
    assert not allow.allows_request(OTHER_SERVICE, [AUDIOHOOK_V4])
    assert allow.allows_request(AUDIOHOOK_V4, [OTHER_SERVICE])
    # the proxy itself is not a Genesys address
    assert not allow.allows_request("127.0.0.1", [])


async def test_unreachable_redis_does_not_stop_refreshing(genesys_api: GenesysApiStandIn) -> None:
    dead = redis.asyncio.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        allow = allowlist(genesys_api, dead)
        assert await allow.refresh()
        assert allows(allow, AUDIOHOOK_V4)
        assert allow.cache_errors == 2  # read before, write after the fetch
    finally:
        await dead.aclose()


async def test_malformed_cache_is_ignored(
    genesys_api: GenesysApiStandIn, redis_client: redis.asyncio.Redis
) -> None:
    await redis_client.set(keys.IP_RANGES_CACHE, b"\x00not json")
    allow = allowlist(genesys_api, redis_client)
    assert await allow.load_cached() is False
    assert await allow.refresh()
    assert allows(allow, AUDIOHOOK_V4)


async def test_periodic_refresh_task(
    genesys_api: GenesysApiStandIn, redis_client: redis.asyncio.Redis
) -> None:
    allow = allowlist(genesys_api, redis_client, refresh_seconds=0.05, retry_seconds=0.05)
    task = asyncio.create_task(allow.run())
    try:
        for _ in range(200):
            if allow.genesys_cidrs:
                break
            await asyncio.sleep(0.02)
        assert allows(allow, AUDIOHOOK_V4)
        genesys_api.entities = [{"cidr": "192.0.2.0/24", "service": "audiohook", "region": "x"}]
        for _ in range(200):
            if allow.genesys_cidrs == ("192.0.2.0/24",):
                break
            await asyncio.sleep(0.02)
        assert allows(allow, OTHER_SERVICE)
        assert not allows(allow, AUDIOHOOK_V4)
        genesys_api.stop()  # failures from now on: the last list stays
        failures = allow.refresh_failures
        for _ in range(200):
            if allow.refresh_failures > failures:
                break
            await asyncio.sleep(0.02)
        assert allow.refresh_failures > failures
        assert allows(allow, OTHER_SERVICE)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
