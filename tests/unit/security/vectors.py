"""docs/protocol.md §2.8 test vector and helpers to sign arbitrary variants of it."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from app.security.integrations import Integration
from app.security.signature import (
    REQUIRED_COMPONENTS,
    SignatureParam,
    SignatureVerifier,
    SignedRequest,
    compute_mac,
    sign_request,
    signature_base,
    signature_params_value,
)

API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
SECRET = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="
AUTHORITY = "audiohook.example.com"
TARGET = "/api/v1/audiohook/ws"
ORG = "d7934305-0972-4844-938e-9060eef73d05"
SESSION = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
CORRELATION = "e160e428-53e2-487c-977d-96989bf5c99d"
NONCE = "VGhpc0lzQVVuaXF1ZU5vbmNl"
CREATED = 1641013200
OTHER_SECRET = base64.b64encode(b"another-secret-of-32-bytes-long!").decode()

VECTOR_BASE = (
    '"@request-target": /api/v1/audiohook/ws\n'
    '"@authority": audiohook.example.com\n'
    '"audiohook-organization-id": d7934305-0972-4844-938e-9060eef73d05\n'
    '"audiohook-session-id": 30b0e395-84d3-4570-ac13-9a62d8f514c0\n'
    '"audiohook-correlation-id": e160e428-53e2-487c-977d-96989bf5c99d\n'
    '"x-api-key": SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh\n'
    '"@signature-params": ("@request-target" "@authority" "audiohook-organization-id" '
    '"audiohook-session-id" "audiohook-correlation-id" "x-api-key");'
    'keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";'
    'alg="hmac-sha256";created=1641013200;expires=1641013230'
)
VECTOR_SIGNATURE_INPUT = (
    'sig1=("@request-target" "@authority" "audiohook-organization-id" "audiohook-session-id" '
    '"audiohook-correlation-id" "x-api-key");keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";'
    'nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";alg="hmac-sha256";created=1641013200;expires=1641013230'
)
VECTOR_SIGNATURE = "sig1=:EySAbkK4NHku3eKUBlE+xEHSMJUauhk9nPhaYrgoOLE=:"
VECTOR_MAC_HEX = "1324806e42b834792edde29406513ec441d230951aba193d9cf85a62b82838b1"
VECTOR2_TARGET = "/api/v1/voicebiometrics/ws"
VECTOR2_EXPIRES = 3282026430
VECTOR2_SIGNATURE = "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:"


def integration(
    secrets: Sequence[str] = (SECRET,), api_key: str = API_KEY, **extra: object
) -> Integration:
    return Integration.model_validate(
        {"name": extra.pop("name", "test"), "api_key": api_key, "client_secrets": list(secrets)}
        | extra
    )


def verifier(*integrations: Integration, **options: Any) -> SignatureVerifier:
    by_key = {i.api_key: i for i in integrations}
    return SignatureVerifier(by_key.get, **options)


def plain_headers(api_key: str = API_KEY) -> dict[str, list[str]]:
    return {
        "audiohook-organization-id": [ORG],
        "audiohook-session-id": [SESSION],
        "audiohook-correlation-id": [CORRELATION],
        "x-api-key": [api_key],
    }


def signed_headers(
    *,
    secret: str = SECRET,
    api_key: str = API_KEY,
    target: str = TARGET,
    authority: str = AUTHORITY,
    nonce: str = NONCE,
    created: int = CREATED,
    lifetime: int = 30,
) -> dict[str, list[str]]:
    signed = sign_request(
        api_key=api_key,
        client_secret_b64=secret,
        request_target=target,
        authority=authority,
        organization_id=ORG,
        session_id=SESSION,
        correlation_id=CORRELATION,
        nonce=nonce,
        created=created,
        lifetime=lifetime,
    )
    headers = plain_headers(api_key)
    headers["signature-input"] = [signed["Signature-Input"]]
    headers["signature"] = [signed["Signature"]]
    return headers


def default_params(**changes: str | int | None) -> list[SignatureParam]:
    params: dict[str, str | int | None] = {
        "keyid": API_KEY,
        "nonce": NONCE,
        "alg": "hmac-sha256",
        "created": CREATED,
        "expires": CREATED + 30,
    }
    params.update(changes)
    return [(key, value) for key, value in params.items() if value is not None]


def custom_signed_headers(
    *,
    components: Sequence[str] = REQUIRED_COMPONENTS,
    params: Sequence[SignatureParam] | None = None,
    values: dict[str, str] | None = None,
    secret: str = SECRET,
    headers: dict[str, list[str]] | None = None,
) -> dict[str, list[str]]:
    """Sign any component list and parameters correctly (with the app's own base builder), so
    that a rejection can only come from the rule under test."""
    params = default_params() if params is None else params
    known = {"@request-target": TARGET, "@authority": AUTHORITY, "@method": "GET"}
    known |= {name: value[0] for name, value in plain_headers().items()}
    known |= values or {}
    params_value = signature_params_value(components, params)
    base = signature_base([(name, known.get(name, "")) for name in components], params_value)
    mac = base64.b64encode(compute_mac(base64.b64decode(secret), base)).decode()
    out = plain_headers() if headers is None else headers
    out["signature-input"] = [f"sig1={params_value}"]
    out["signature"] = [f"sig1=:{mac}:"]
    return out


def request(
    headers: dict[str, list[str]], target: str = TARGET, authority: str | None = AUTHORITY
) -> SignedRequest:
    return SignedRequest(request_target=target, authority=authority, headers=headers)
