"""What the per-source limits count a client under, and the count of connections per source
that have not sent their request head. The addresses are documentation ranges (RFC 5737,
RFC 3849), only ever values here."""

from __future__ import annotations

import ipaddress

import pytest

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


def test_releasing_a_place_never_taken_is_a_bug_that_shows() -> None:
    with pytest.raises(KeyError):
        SourceConnectionLimit(2, ipv6_prefix_length=64).release("192.0.2.1")
