"""Source-address allowlist: Genesys AudioHook ranges plus static CIDRs, IPv4 and IPv6.

The Genesys ranges come from the Genesys Cloud API (OAuth client credentials, then
`GET /api/v2/ipranges`, entries whose `service` is `audiohook`). The last good list is kept in
memory and in Redis, so replicas share it and a restart does not need the API. A failing API
keeps the last good list; with no list at all the allowlist fails closed unless configured
otherwise. Static CIDRs are always allowed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import redis.asyncio
import redis.exceptions

from app.observability.metrics import IP_RANGES_AGE_SECONDS, IP_RANGES_REFRESHES, IP_RANGES_SIZE
from app.redis import keys
from app.redis.client import RedisClient

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
AUDIOHOOK_SERVICE = "audiohook"


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (host bits allowed) -> networks; raises ValueError on a bad entry."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def parse_address(text: str) -> IPAddress | None:
    """An address as found in a socket peer or X-Forwarded-For hop (`[v6]:port` and `v4:port`
    tolerated); IPv4-mapped IPv6 becomes IPv4. None when it is not an address."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def contains(networks: Sequence[IPNetwork], address: IPAddress) -> bool:
    return any(address in network for network in networks)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted_proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The client's address: the socket peer, or, when the peer is a trusted proxy, the
    rightmost X-Forwarded-For hop that is not a trusted proxy. None when it cannot be known."""
    address = parse_address(peer) if peer else None
    if address is None or not contains(trusted_proxies, address):
        return address
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        hop_address = parse_address(hop)
        if hop_address is None:
            return None  # a garbled hop: the chain beyond it cannot be trusted
        address = hop_address
        if not contains(trusted_proxies, address):
            return address
    return address  # every hop is a trusted proxy: the leftmost one is the best we know


class GenesysApiError(RuntimeError):
    """The Genesys API did not deliver a usable range list. The message holds no secrets."""


@dataclass(frozen=True, slots=True)
class GenesysApiConfig:
    login_base_url: str
    api_base_url: str
    client_id: str
    client_secret: str
    regions: tuple[str, ...] = ()
    timeout_seconds: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> GenesysApiConfig | None:
        if not settings.genesys_client_id or settings.genesys_client_secret is None:
            return None
        region = settings.genesys_region.strip().strip(".")
        return cls(
            login_base_url=(settings.genesys_login_base_url or f"https://login.{region}"),
            api_base_url=(settings.genesys_api_base_url or f"https://api.{region}"),
            client_id=settings.genesys_client_id,
            client_secret=settings.genesys_client_secret.get_secret_value(),
            regions=tuple(settings.genesys_ip_regions),
            timeout_seconds=settings.genesys_http_timeout_seconds,
        )


async def fetch_genesys_ranges(config: GenesysApiConfig) -> list[str]:
    """The audiohook CIDRs from the Genesys API; raises GenesysApiError."""
    try:
        async with httpx.AsyncClient(timeout=config.timeout_seconds) as client:
            token = await client.post(
                config.login_base_url.rstrip("/") + "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(config.client_id, config.client_secret),
            )
            if token.status_code != 200:
                raise GenesysApiError(f"token request answered HTTP {token.status_code}")
            access_token = _json(token).get("access_token")
            if not isinstance(access_token, str) or not access_token:
                raise GenesysApiError("token response has no access_token")
            ranges = await client.get(
                config.api_base_url.rstrip("/") + "/api/v2/ipranges",
                headers={"Authorization": f"Bearer {access_token}"},
            )
            if ranges.status_code != 200:
                raise GenesysApiError(f"ipranges request answered HTTP {ranges.status_code}")
            return _audiohook_cidrs(_json(ranges), config.regions)
    except httpx.HTTPError as exc:
        raise GenesysApiError(f"request failed: {type(exc).__name__}") from exc


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise GenesysApiError("response is not JSON") from exc
    if not isinstance(body, dict):
        raise GenesysApiError("response is not a JSON object")
    return body


def _audiohook_cidrs(body: dict[str, Any], regions: Sequence[str]) -> list[str]:
    entities = body.get("entities")
    if not isinstance(entities, list):
        raise GenesysApiError("ipranges response has no entities list")
    wanted_regions = {region.lower() for region in regions}
    cidrs: list[str] = []
    skipped = 0
    for entity in entities:
        if not isinstance(entity, dict):
            skipped += 1
            continue
        service, cidr, region = entity.get("service"), entity.get("cidr"), entity.get("region")
        if not isinstance(service, str) or service.lower() != AUDIOHOOK_SERVICE:
            continue
        if wanted_regions and (not isinstance(region, str) or region.lower() not in wanted_regions):
            continue
        try:
            cidrs.append(str(ipaddress.ip_network(str(cidr).strip(), strict=False)))
        except ValueError:
            skipped += 1
    if skipped:
        log.warning("ignored %d malformed ipranges entries", skipped)
    if not cidrs:
        # An empty list would refuse every Genesys connection: keep the last good one instead.
        raise GenesysApiError("ipranges response has no audiohook ranges")
    return sorted(set(cidrs))


@dataclass(frozen=True, slots=True)
class RangeList:
    cidrs: tuple[str, ...]
    fetched_at: float  # wall-clock Unix seconds

    def to_json(self) -> str:
        return json.dumps({"cidrs": list(self.cidrs), "fetched_at": self.fetched_at})

    @classmethod
    def from_json(cls, raw: bytes | str) -> RangeList:
        data = json.loads(raw)
        cidrs, fetched_at = data["cidrs"], data["fetched_at"]
        if not isinstance(cidrs, list) or not cidrs or not isinstance(fetched_at, int | float):
            raise ValueError("malformed cached range list")
        parse_networks(cidrs)
        return cls(tuple(str(cidr) for cidr in cidrs), float(fetched_at))


class IpAllowlist:
    """Decides whether a source address may open a connection."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        static_cidrs: Sequence[str] = (),
        trusted_proxies: Sequence[str] = (),
        fail_closed: bool = True,
        genesys: GenesysApiConfig | None = None,
        redis_client: RedisClient | None = None,
        refresh_seconds: float = 3600.0,
        retry_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.enabled = enabled
        self._static = parse_networks(static_cidrs)
        self.trusted_proxies = parse_networks(trusted_proxies)
        self.fail_closed = fail_closed
        self._genesys = genesys
        self._redis = redis_client
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._ranges: RangeList | None = None
        self._networks: tuple[IPNetwork, ...] = ()
        self.refresh_successes = 0
        self.refresh_failures = 0
        self.cache_errors = 0
        IP_RANGES_SIZE.labels(source="static").set(len(self._static))

    @classmethod
    def from_settings(cls, settings: Settings, redis_client: RedisClient | None) -> IpAllowlist:
        return cls(
            enabled=settings.ip_allowlist_enabled,
            static_cidrs=settings.ip_allowlist_cidrs,
            trusted_proxies=settings.trusted_proxies,
            fail_closed=settings.ip_allowlist_fail_closed,
            genesys=GenesysApiConfig.from_settings(settings),
            redis_client=redis_client,
            refresh_seconds=settings.genesys_ip_refresh_seconds,
            retry_seconds=settings.genesys_ip_retry_seconds,
        )

    # --- decisions ----------------------------------------------------------------------------

    def client_address(self, peer: str | None, forwarded_for: Sequence[str]) -> IPAddress | None:
        return client_address(peer, forwarded_for, self.trusted_proxies)

    def allows(self, address: IPAddress | None) -> bool:
        if not self.enabled:
            return True
        if address is None:
            return False
        if contains(self._static, address):
            return True
        if self._genesys is None:
            return False  # the static CIDRs are the whole list
        if self._ranges is None:
            return not self.fail_closed
        return contains(self._networks, address)

    def allows_request(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> bool:
        return self.allows(self.client_address(peer, forwarded_for))

    # --- state for metrics and readiness ------------------------------------------------------

    @property
    def ready(self) -> bool:
        """False while Genesys ranges are configured, none is available and the allowlist
        fails closed (every Genesys connection would be refused): a readiness signal."""
        return not (self.enabled and self._genesys and self._ranges is None and self.fail_closed)

    @property
    def genesys_cidrs(self) -> tuple[str, ...]:
        return self._ranges.cidrs if self._ranges is not None else ()

    @property
    def list_size(self) -> int:
        """CIDRs in use: Genesys ranges plus static ones."""
        return len(self._networks) + len(self._static)

    @property
    def list_age_seconds(self) -> float:
        """Age of the Genesys list in use; infinity when there is none."""
        if self._ranges is None:
            return math.inf
        return max(0.0, self._clock() - self._ranges.fetched_at)

    # --- refreshing ---------------------------------------------------------------------------

    def _adopt(self, ranges: RangeList) -> None:
        self._networks = parse_networks(ranges.cidrs)
        self._ranges = ranges
        IP_RANGES_SIZE.labels(source="genesys").set(len(self._networks))

    async def _read_cache(self) -> RangeList | None:
        if self._redis is None:
            return None
        try:
            raw = await self._redis.get(keys.IP_RANGES_CACHE)
            return RangeList.from_json(raw) if raw is not None else None
        except (redis.exceptions.RedisError, OSError) as exc:
            self.cache_errors += 1
            log.warning("cannot read the cached ip ranges: %s", type(exc).__name__)
        except (ValueError, KeyError, TypeError):
            self.cache_errors += 1
            log.warning("ignoring a malformed cached ip-range list")
        return None

    async def _write_cache(self, ranges: RangeList) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.set(keys.IP_RANGES_CACHE, ranges.to_json())
        except (redis.exceptions.RedisError, OSError) as exc:
            self.cache_errors += 1
            log.warning("cannot cache the ip ranges: %s", type(exc).__name__)

    async def _adopt_cache_if_newer(self) -> RangeList | None:
        cached = await self._read_cache()
        if cached is not None and (
            self._ranges is None or cached.fetched_at > self._ranges.fetched_at
        ):
            self._adopt(cached)
        return cached

    def _is_recent(self, ranges: RangeList) -> bool:
        return self._clock() - ranges.fetched_at < self.refresh_seconds / 2

    async def load_cached(self) -> bool:
        """Adopt the list cached in Redis when newer than ours; True when a list is in use."""
        await self._adopt_cache_if_newer()
        return self._ranges is not None

    async def refresh(self, *, force: bool = False) -> bool:
        """Bring the Genesys list up to date; True when a fresh list is in use afterwards.

        Unless forced, a list another replica cached less than `refresh_seconds` ago is adopted
        instead of calling the API. On API failure the last good list stays in use."""
        if self._genesys is None:
            return False
        cached = await self._adopt_cache_if_newer()
        # Another replica refreshed recently: share its list instead of calling the API too.
        if not force and cached is not None and self._is_recent(cached):
            return True
        try:
            cidrs = await fetch_genesys_ranges(self._genesys)
        except GenesysApiError as exc:
            self.refresh_failures += 1
            IP_RANGES_REFRESHES.labels(result="failure").inc()
            log.error(
                "genesys ip-range refresh failed; %s: %s",
                "keeping the last good list" if self._ranges else "no list available",
                exc,
            )
            return False
        ranges = RangeList(tuple(cidrs), self._clock())
        self._adopt(ranges)
        await self._write_cache(ranges)
        self.refresh_successes += 1
        IP_RANGES_REFRESHES.labels(result="success").inc()
        log.info("genesys ip ranges refreshed", extra={"ranges": len(cidrs)})
        return True

    async def run(self) -> None:
        """Refresh periodically until cancelled (retrying sooner after a failure)."""
        if not self.enabled or self._genesys is None:
            return
        IP_RANGES_AGE_SECONDS.set_function(lambda: self.list_age_seconds)
        while True:
            ok = await self.refresh()
            await asyncio.sleep(self.refresh_seconds if ok else self.retry_seconds)
