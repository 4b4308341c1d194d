"""The signed WebSocket upgrade request a Genesys-like client sends (docs/protocol.md §1-2)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from websockets.uri import parse_uri

from app.security.signature import sign_request


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A `ws://` or `wss://` URI and the two derived values the signature covers."""

    uri: str
    secure: bool
    host: str
    port: int
    authority: str  # host[:port] as dialled: lower-case, default port omitted (= Host header)
    request_target: str  # path + ?query

    @classmethod
    def parse(cls, uri: str) -> Endpoint:
        """ValueError for anything but a ws:// or wss:// URI."""
        try:
            parsed = parse_uri(uri)
        except Exception as exc:  # websockets raises InvalidURI
            raise ValueError(f"not a ws:// or wss:// URI: {uri}") from exc
        host = parsed.host.lower()
        shown = host
        try:
            if ipaddress.ip_address(host).version == 6:
                shown = f"[{host}]"
        except ValueError:
            pass
        default_port = 443 if parsed.secure else 80
        authority = shown if parsed.port == default_port else f"{shown}:{parsed.port}"
        return cls(uri, parsed.secure, host, parsed.port, authority, parsed.resource_name)


def upgrade_headers(
    endpoint: Endpoint,
    *,
    api_key: str,
    client_secret: str | None,
    organization_id: str,
    session_id: str,
    correlation_id: str,
    nonce: str | None = None,
    created: int | None = None,
    lifetime: int = 30,
) -> dict[str, str]:
    """AudioHook headers in the order Genesys writes them; signed when a secret is given.

    `client_secret` is the base64 secret of the integration; None or "" sends no signature.
    """
    headers = {
        "Audiohook-Organization-Id": organization_id,
        "Audiohook-Session-Id": session_id,
        "Audiohook-Correlation-Id": correlation_id,
        "X-API-KEY": api_key,
    }
    if client_secret:
        headers |= sign_request(
            api_key=api_key,
            client_secret_b64=client_secret,
            request_target=endpoint.request_target,
            authority=endpoint.authority,
            organization_id=organization_id,
            session_id=session_id,
            correlation_id=correlation_id,
            nonce=nonce,
            created=created,
            lifetime=lifetime,
        )
    return headers
