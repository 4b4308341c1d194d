"""Allowlist decisions and client-address resolution (no network)."""

from __future__ import annotations

import ipaddress
import math

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.security.ipallow import (
    GenesysApiConfig,
    IpAllowlist,
    RangeList,
    client_address,
    parse_address,
    parse_networks,
)

TRUSTED = parse_networks(["10.0.0.0/8", "fd00::/8"])
GENESYS = GenesysApiConfig(
    login_base_url="http://127.0.0.1:9", api_base_url="http://127.0.0.1:9",
    client_id="id", client_secret="secret",
)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"),
        (" 198.51.100.7 ", "198.51.100.7"),
        ("198.51.100.7:4711", "198.51.100.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("unknown", None),
        ("", None),
        ("[2001:db8::1", None),
        ("300.1.1.1", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (str(parsed) if parsed else None) == expected


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("198.51.100.7", [], "198.51.100.7"),
        # an untrusted peer cannot claim another address
        ("198.51.100.7", ["203.0.113.9"], "198.51.100.7"),
        # a trusted proxy without X-Forwarded-For: the proxy itself
        ("10.1.2.3", [], "10.1.2.3"),
        ("10.1.2.3", ["203.0.113.9"], "203.0.113.9"),
        # the rightmost untrusted hop wins; what the client put further left is ignored
        ("10.1.2.3", ["1.1.1.1, 203.0.113.9, 10.9.9.9"], "203.0.113.9"),
        ("10.1.2.3", ["1.1.1.1", "203.0.113.9", "10.9.9.9"], "203.0.113.9"),
        ("10.1.2.3", ["10.5.5.5, 10.9.9.9"], "10.5.5.5"),
        ("10.1.2.3", ["1.1.1.1, garbage"], None),
        ("fd00::1", ["2001:db8::7"], "2001:db8::7"),
        ("::ffff:10.1.2.3", ["[2001:db8::7]:1234"], "2001:db8::7"),
        (None, ["203.0.113.9"], None),
        ("not-an-ip", [], None),
    ],
)
def test_client_address(peer: str | None, forwarded_for: list[str], expected: str | None) -> None:
    found = client_address(peer, forwarded_for, TRUSTED)
    assert (str(found) if found else None) == expected


def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_disabled_allows_everything() -> None:
    allowlist = IpAllowlist(enabled=False, genesys=GENESYS)
    assert allowlist.allows(address("192.0.2.1"))
    assert allowlist.allows(None)


def test_static_only_when_genesys_is_not_configured() -> None:
    allowlist = IpAllowlist(static_cidrs=["192.0.2.0/24", "2001:db8::/32"], fail_closed=False)
    assert allowlist.allows(address("192.0.2.200"))
    assert allowlist.allows(address("2001:db8:1::5"))
    assert not allowlist.allows(address("198.51.100.1"))
    assert not allowlist.allows(None)
    assert allowlist.list_size == 2
    assert allowlist.ready
    assert allowlist.list_age_seconds == math.inf


@pytest.mark.parametrize("fail_closed", [True, False])
def test_no_genesys_list_yet(fail_closed: bool) -> None:
    allowlist = IpAllowlist(static_cidrs=["192.0.2.0/24"], genesys=GENESYS, fail_closed=fail_closed)
    assert allowlist.allows(address("192.0.2.9"))  # static CIDRs always count
    assert allowlist.allows(address("198.51.100.1")) is not fail_closed
    assert allowlist.ready is not fail_closed


def test_invalid_static_cidr_is_rejected_by_settings() -> None:
    with pytest.raises(ValueError, match="does not appear to be"):
        Settings(ip_allowlist_cidrs=["10.0.0.0/33"])
    with pytest.raises(ValueError, match="does not appear to be"):
        Settings(trusted_proxies=["proxy.local"])


def test_genesys_config_from_settings() -> None:
    assert GenesysApiConfig.from_settings(Settings()) is None
    config = GenesysApiConfig.from_settings(
        Settings(
            genesys_region="mypurecloud.de",
            genesys_client_id="cid",
            genesys_client_secret=SecretStr("csecret"),
            genesys_ip_regions=["eu-central-1"],
        )
    )
    assert config is not None
    assert config.login_base_url == "https://login.mypurecloud.de"
    assert config.api_base_url == "https://api.mypurecloud.de"
    assert config.regions == ("eu-central-1",)
    assert "csecret" not in repr(Settings(genesys_client_secret=SecretStr("csecret")))
    overridden = GenesysApiConfig.from_settings(
        Settings(
            genesys_client_id="cid",
            genesys_client_secret=SecretStr("csecret"),
            genesys_login_base_url="http://127.0.0.1:1",
            genesys_api_base_url="http://127.0.0.1:2",
        )
    )
    assert overridden is not None
    assert (overridden.login_base_url, overridden.api_base_url) == (
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
    )


def test_range_list_round_trip_and_validation() -> None:
    ranges = RangeList(("198.51.100.0/24",), 1700000000.5)
    assert RangeList.from_json(ranges.to_json()) == ranges
    for bad in ('{"cidrs": [], "fetched_at": 1}', '{"cidrs": ["x"], "fetched_at": 1}', "[]"):
        with pytest.raises((ValueError, KeyError, TypeError)):
            RangeList.from_json(bad)
