"""What the per-source limits count a client under, and the count of connections per source
that have not sent their request head. The addresses are documentation ranges (RFC 5737,
RFC 3849), only ever values here."""

from __future__ import annotations

import ipaddress

import pytest

from app.config import Settings
from app.server import uvicorn_config
from app.transport.source_limiter import (
    UNKNOWN_SOURCE,
    SourceConnectionLimit,
    SourceRateLimiter,
    source_key,
)

V4 = ipaddress.IPv4Address("192.0.2.1")
OTHER_V4 = ipaddress.IPv4Address("192.0.2.2")


def v6(text: str) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(text)


def test_an_ipv6_client_counts_as_its_network_and_an_ipv4_one_as_its_address() -> None:
    assert source_key(v6("2001:db8:1:2:aaaa::1"), 64) == "2001:db8:1:2::/64"
    assert source_key(v6("2001:db8:1:2:ffff:ffff:ffff:ffff"), 64) == "2001:db8:1:2::/64"
    assert source_key(v6("2001:db8:1:3::1"), 64) == "2001:db8:1:3::/64"
    assert source_key(v6("2001:db8:1:2:aaaa::1"), 48) == "2001:db8:1::/48"
    assert source_key(v6("2001:db8:1:2:aaaa::1"), 128) == "2001:db8:1:2:aaaa::1"
    assert source_key(V4, 64) == "192.0.2.1"
    assert source_key(None, 64) == UNKNOWN_SOURCE


def test_a_link_local_clients_zone_is_not_part_of_its_source() -> None:
    assert source_key(v6("fe80::1%eth0"), 128) == source_key(v6("fe80::1%eth1"), 128) == "fe80::1"
    assert source_key(v6("fe80::1%eth0"), 64) == "fe80::/64"


@pytest.mark.parametrize(
    "carrier",
    [
        "64:ff9b::c000:201",  # NAT64's well-known prefix
        "2002:c000:201::1",  # 6to4: one IPv4 address owns the /48, 65,536 /64s
        "2002:c000:201:ffff::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdfe",  # Teredo: the client's address, inverted
    ],
)
def test_an_ipv6_address_carrying_an_ipv4_clients_address_counts_as_that_address(
    carrier: str,
) -> None:
    assert source_key(v6(carrier), 64) == "192.0.2.1"
    assert source_key(v6(carrier), 128) == "192.0.2.1"


def test_ipv4_clients_behind_nat64_keep_their_own_places() -> None:
    limit = SourceConnectionLimit(1, ipv6_prefix_length=64)
    assert limit.hold(v6("64:ff9b::c000:201")) == "192.0.2.1"
    assert limit.hold(v6("64:ff9b::c633:6407")) == "198.51.100.7"


def test_addresses_of_one_ipv6_network_share_an_upgrade_budget() -> None:
    limiter = SourceRateLimiter(rate=0.001, burst=3, ipv6_prefix_length=64)
    chosen = [v6(f"2001:db8:0:1::{n:x}") for n in range(1, 5)]  # a new address every time
    assert [limiter.allow(address) for address in chosen] == [True, True, True, False]
    assert limiter.allow(v6("2001:db8:0:2::1"))  # the next /64 has its own
    assert len(limiter) == 2


def test_with_a_128_bit_prefix_each_ipv6_address_has_its_own_budget() -> None:
    limiter = SourceRateLimiter(rate=0.001, burst=1, ipv6_prefix_length=128)
    assert limiter.allow(v6("2001:db8::1"))
    assert limiter.allow(v6("2001:db8::2"))
    assert not limiter.allow(v6("2001:db8::1"))


def test_a_source_holds_up_to_the_limit_and_others_keep_their_own() -> None:
    limit = SourceConnectionLimit(3, ipv6_prefix_length=64)
    assert [limit.hold(V4) for _ in range(4)] == ["192.0.2.1"] * 3 + [None]
    assert limit.held(V4) == 3  # the refusal took nothing
    assert limit.hold(OTHER_V4) == "192.0.2.2"


def test_connections_from_one_ipv6_network_share_its_places() -> None:
    limit = SourceConnectionLimit(2, ipv6_prefix_length=64)
    assert limit.hold(v6("2001:db8::1")) == "2001:db8::/64"
    assert limit.hold(v6("2001:db8::2")) == "2001:db8::/64"
    assert limit.hold(v6("2001:db8::3")) is None
    assert limit.held(v6("2001:db8::ffff")) == 2


def test_a_released_place_can_be_taken_again_and_a_source_leaves_with_its_last() -> None:
    limit = SourceConnectionLimit(2, ipv6_prefix_length=64)
    places = [limit.hold(V4), limit.hold(V4)]
    assert places == ["192.0.2.1", "192.0.2.1"]
    limit.release("192.0.2.1")
    assert limit.hold(V4) == "192.0.2.1"
    assert limit.hold(V4) is None
    limit.release("192.0.2.1")
    limit.release("192.0.2.1")
    assert len(limit) == 0  # memory follows the open connections, not the addresses seen
    assert limit.held(V4) == 0


def test_many_sources_together_hold_up_to_the_total() -> None:
    limit = SourceConnectionLimit(2, ipv6_prefix_length=64, total_limit=3)
    assert [limit.hold(V4), limit.hold(OTHER_V4), limit.hold(v6("2001:db8::1"))] == [
        "192.0.2.1", "192.0.2.2", "2001:db8::/64",
    ]  # fmt: skip
    assert limit.full
    assert limit.hold(v6("2001:db8:1::1")) is None  # a source with none held: refused all the same
    assert limit.total == 3
    limit.release("192.0.2.2")
    assert not limit.full
    assert limit.hold(v6("2001:db8:1::1")) == "2001:db8:1::/64"
    per_source_off = SourceConnectionLimit(0, ipv6_prefix_length=64, total_limit=2)
    assert [per_source_off.hold(V4) for _ in range(3)] == ["192.0.2.1", "192.0.2.1", None]


def test_sources_outside_the_allowlist_hold_only_half_the_total() -> None:
    limit = SourceConnectionLimit(0, ipv6_prefix_length=64, total_limit=4)
    outside = [limit.hold(V4, allowed=False), limit.hold(OTHER_V4, allowed=False)]
    assert outside == ["192.0.2.1", "192.0.2.2"]
    assert limit.outside_full
    assert limit.hold(v6("2001:db8::1"), allowed=False) is None  # their half is taken
    assert limit.hold(v6("2001:db8::1")) == "2001:db8::/64"  # an allowed source still fits
    limit.release("192.0.2.2", allowed=False)
    assert (limit.total, limit.outside) == (2, 1)
    assert limit.hold(v6("2001:db8::2"), allowed=False) == "2001:db8::/64"


def test_releasing_a_place_never_taken_is_a_bug_that_shows() -> None:
    with pytest.raises(KeyError):
        SourceConnectionLimit(2, ipv6_prefix_length=64).release("192.0.2.1")


def test_a_listener_counts_unfinished_requests_per_source_as_configured() -> None:
    settings = Settings(source_ipv6_prefix_length=56, max_unfinished_requests_per_source=7)
    protocol = uvicorn_config(object(), "127.0.0.1", 0, settings).http
    assert isinstance(protocol, type)
    limit = vars(protocol)["unfinished_per_source"]  # the guard's (http_guard.py)
    assert isinstance(limit, SourceConnectionLimit)
    assert (limit.limit, limit.ipv6_prefix_length) == (7, 56)
    assert limit.total_limit == 0  # a listener without the gateway: the metrics one
