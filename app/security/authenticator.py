"""One decision per upgrade request: signature, integration and nonce together.

The transport calls `authenticate` with the raw request parts and answers a failure no sooner
than `auth_min_failure_delay_seconds` after the request arrived, so the time to an answer
reveals nothing about which check failed (`python -m app.bench.auth` measures it). The reason
is for logs and metrics only; clients get a generic answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.redis.client import RedisClient
from app.security.integrations import Integration, IntegrationRegistry
from app.security.nonces import NonceCache, NonceStoreUnavailable
from app.security.signature import (
    Outcome,
    SignatureVerifier,
    SignedRequest,
    authority_variants,
    canonical_authority,
    collect_headers,
    request_target,
)

if TYPE_CHECKING:
    from app.config import Settings

__all__ = ["REPLAYED", "AuthDecision", "Authenticator", "NonceStoreUnavailable"]

HeaderPairs = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]

REPLAYED_NONCE = "replayed_nonce"


@dataclass(frozen=True, slots=True)
class AuthDecision:
    ok: bool
    integration: Integration | None
    outcome: Outcome
    reason: str  # for logs; never contains a secret or a signature value
    # `connections_rejected{cause=...}` for failures ("auth_<outcome>", "replayed_nonce");
    # "verified" or "unsigned" for accepted requests.
    metric_label: str
    # An accepted signature's nonce, and until when it would be accepted: what `verify`
    # leaves to be claimed (None for an unsigned request, which has no nonce).
    nonce: str | None = None
    nonce_expires_at: float | None = None


REPLAYED = AuthDecision(
    ok=False,
    integration=None,
    outcome=Outcome.FAILED,
    reason="replayed nonce",
    metric_label=REPLAYED_NONCE,
)


class Authenticator:
    def __init__(
        self,
        verifier: SignatureVerifier,
        nonces: NonceCache,
        *,
        public_authority: str | None = None,
    ) -> None:
        self._verifier = verifier
        self._nonces = nonces
        self._public_authority = canonical_authority(public_authority)

    @classmethod
    def from_settings(
        cls, settings: Settings, registry: IntegrationRegistry, redis_client: RedisClient
    ) -> Authenticator:
        verifier = SignatureVerifier(
            registry.get,
            max_age_seconds=settings.signature_max_age_seconds,
            clock_skew_seconds=settings.signature_clock_skew_seconds,
            min_nonce_length=settings.signature_min_nonce_length,
        )
        nonces = NonceCache(redis_client, margin_seconds=settings.signature_clock_skew_seconds)
        return cls(verifier, nonces, public_authority=settings.public_authority)

    @property
    def nonces(self) -> NonceCache:
        return self._nonces

    def _authority_diagnosis(self, signed: str, used: str | None, host: str | None) -> str:
        """The log line's reason when the signature verifies only under another authority:
        what the client signed, what the gateway compared it with, and the fix."""
        fix = f"set AUDIOHOOK_PUBLIC_AUTHORITY={signed}"
        if self._public_authority is not None:
            return (
                f"signed for {signed} but AUDIOHOOK_PUBLIC_AUTHORITY is {used}: {fix}"
                if canonical_authority(host) != signed
                else f"signed for {signed} (the Host header) but AUDIOHOOK_PUBLIC_AUTHORITY is "
                f"{used}: {fix} or unset it"
            )
        received = f"received Host {used}" if used is not None else "received no Host"
        if used is not None and signed.startswith(used + ":"):
            forward = "forward Host with its port (nginx: proxy_set_header Host $http_host)"
        else:
            forward = (
                "forward the client's Host unchanged (nginx: proxy_set_header Host $http_host)"
            )
        return f"signed for {signed} but {received}: {fix} or {forward}"

    async def authenticate(
        self,
        headers: HeaderPairs,
        raw_path: str | bytes,
        query_string: str | bytes,
        host: str | None,
        now: float,
    ) -> AuthDecision:
        """Decide on one upgrade request; `now` is wall-clock Unix seconds.

        Raises NonceStoreUnavailable when Redis cannot record the nonce (answer HTTP 503)."""
        decision = self.verify(headers, raw_path, query_string, host, now)
        nonce, nonce_expires_at = decision.nonce, decision.nonce_expires_at
        if (
            decision.ok
            and nonce is not None
            and nonce_expires_at is not None
            and not await self._nonces.claim(nonce, nonce_expires_at, now)
        ):
            return REPLAYED
        return decision

    def verify(
        self,
        headers: HeaderPairs,
        raw_path: str | bytes,
        query_string: str | bytes,
        host: str | None,
        now: float,
    ) -> AuthDecision:
        """`authenticate` less the nonce claim: an accepted decision carries the nonce, which
        the caller must claim before it lets the connection proceed (app/transport/admission.py
        claims it together with the session id, app/security/upgrade_claims.py)."""
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        collected = collect_headers(pairs)
        if host is None and collected.get("host"):
            host = collected["host"][0]
        authority = self._public_authority or canonical_authority(host)
        request = SignedRequest(
            request_target=request_target(raw_path, query_string),
            authority=authority,
            headers=collected,
            authority_variants=authority_variants(
                authority,
                host,
                collected.get("x-forwarded-host", ()),
                collected.get("x-forwarded-port", ()),
            ),
        )
        result = self._verifier.verify(request, now)
        if not result.accepted:
            reason = result.reason
            if result.signed_authority is not None:
                reason = self._authority_diagnosis(result.signed_authority, authority, host)
            return AuthDecision(
                ok=False,
                integration=None,
                outcome=result.outcome,
                reason=reason,
                metric_label=f"auth_{result.outcome.value.lower()}",
            )
        return AuthDecision(
            ok=True,
            integration=result.integration,
            outcome=result.outcome,
            reason=result.reason,
            metric_label=result.outcome.value.lower(),
            nonce=result.nonce,
            nonce_expires_at=result.nonce_expires_at,
        )
