"""Limits per source, checked before any authentication work.

A source is what `source_key` makes of the client's address: an IPv4 address, or the IPv6
network of `ipv6_prefix_length` bits around an IPv6 one. A host or subscriber is given a
whole IPv6 /64 (often more) and may send from any address in it, so limits per IPv6
address would bound nothing. An IPv6 address that carries an IPv4 client's address (NAT64's
well-known prefix, 6to4, Teredo) counts as that IPv4 address: behind a NAT64 translator every
IPv4 client would otherwise share one /64, and one IPv4 address owns a whole 6to4 /48.

- `SourceRateLimiter`: upgrades per second. Memory is bounded: at most ``max_sources``
  sources are tracked; the least recently seen one is forgotten first (a forgotten source
  starts again with a full bucket, which only errs on the side of letting a client in).
- `SourceConnectionLimit`: connections at a time that have not sent their request head, per
  source and in all (many sources, each under its own bound, must not take the descriptors
  the live calls and the metrics listener need; those outside the IP allowlist, only half
  of them, so that they cannot keep Genesys out). Memory is bounded by the open
  connections: a source leaves with its last one.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from app.ratelimit import TokenBucket
from app.security.ipallow import IPAddress

UNKNOWN_SOURCE = "unknown"  # clients whose address cannot be known share one budget
# The bound a connection without a whole request head would pass (SourceConnectionLimit).
PER_SOURCE, TOTAL, OUTSIDE = "per_source", "total", "outside"
_NAT64_PREFIX = 0x0064_FF9B << 96  # 64:ff9b::/96 (RFC 6052): the IPv4 address in the low 32 bits


def source_key(address: IPAddress | None, ipv6_prefix_length: int) -> str:
    """The source `address` is counted under (see the module's docstring)."""
    if address is None:
        return UNKNOWN_SOURCE
    if isinstance(address, ipaddress.IPv6Address):
        address = _embedded_ipv4(address) or address
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    # From the integer, which also drops a link-local address's %zone (the client's to pick).
    host_bits = 128 - ipv6_prefix_length
    network = ipaddress.IPv6Address(int(address) >> host_bits << host_bits)
    return str(network) if host_bits == 0 else f"{network}/{ipv6_prefix_length}"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if int(address) >> 32 == _NAT64_PREFIX >> 32:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address.teredo is not None:
        return address.teredo[1]  # (the Teredo server, the client)
    return address.sixtofour


class SourceRateLimiter:
    def __init__(
        self, rate: float, burst: int, ipv6_prefix_length: int, max_sources: int = 50_000
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.ipv6_prefix_length = ipv6_prefix_length
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, address: IPAddress | None) -> bool:
        """Take one upgrade from the budget of `address`'s source; False when it is spent."""
        source = source_key(address, self.ipv6_prefix_length)
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = TokenBucket(rate=self.rate, burst=self.burst)
            self._buckets[source] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        return bucket.try_acquire()

    def __len__(self) -> int:
        return len(self._buckets)


class SourceConnectionLimit:
    """At most `limit` connections at a time per source in one state (the HTTP guard's: the
    request head not complete yet), and `total_limit` from all sources together, of which
    sources outside the IP allowlist may hold only half (0: either bound off). `hold` takes
    a place and names the source it was taken for, `release` gives it back; each place held
    is released exactly once."""

    __slots__ = ("_held", "ipv6_prefix_length", "limit", "outside", "total", "total_limit")

    def __init__(self, limit: int, ipv6_prefix_length: int, total_limit: int = 0) -> None:
        self.limit = limit
        self.total_limit = total_limit
        self.ipv6_prefix_length = ipv6_prefix_length
        self.total = 0  # places held
        self.outside = 0  # of them, by sources outside the allowlist
        self._held: dict[str, int] = {}

    @property
    def full(self) -> bool:
        """All sources together hold `total_limit` places."""
        return 0 < self.total_limit <= self.total

    @property
    def outside_full(self) -> bool:
        """Sources outside the allowlist hold their half of `total_limit`."""
        return self.total_limit > 0 and self.outside >= self.total_limit // 2

    def hold(self, address: IPAddress, allowed: bool = True) -> str | None:
        """Take a place for `address`'s source (`allowed`: in the IP allowlist, or no
        allowlist), and return that source for `release`; None (nothing taken) when the
        source holds `limit` places already, all together hold `total_limit`, or a source
        outside the allowlist finds that half taken by such sources."""
        source = source_key(address, self.ipv6_prefix_length)
        count = self._held.get(source, 0)
        if self._bound(count, allowed) is not None:
            return None
        if not allowed:
            self.outside += 1
        self._held[source] = count + 1
        self.total += 1
        return source

    def bound_reached(self, address: IPAddress, allowed: bool = True) -> str | None:
        """Which bound a new place for `address`'s source would pass: PER_SOURCE, TOTAL or
        OUTSIDE, in the order `hold` asks them (None: none)."""
        return self._bound(self.held(address), allowed)

    def _bound(self, count: int, allowed: bool) -> str | None:
        if self.limit and count >= self.limit:
            return PER_SOURCE
        if self.full:
            return TOTAL
        if not allowed and self.outside_full:
            return OUTSIDE
        return None

    def release(self, source: str, allowed: bool = True) -> None:
        count = self._held[source] - 1
        if count:
            self._held[source] = count
        else:
            del self._held[source]
        self.total -= 1
        if not allowed:
            self.outside -= 1

    def held(self, address: IPAddress) -> int:
        return self._held.get(source_key(address, self.ipv6_prefix_length), 0)

    def __len__(self) -> int:
        """Sources holding a place."""
        return len(self._held)
