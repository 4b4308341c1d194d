from __future__ import annotations

import pytest

from app.client.upgrade import Endpoint, upgrade_headers

# docs/protocol.md §2.8 test vector.
API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
SECRET = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="
ORG = "d7934305-0972-4844-938e-9060eef73d05"
SESSION = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
CORRELATION = "e160e428-53e2-487c-977d-96989bf5c99d"
NONCE = "VGhpc0lzQVVuaXF1ZU5vbmNl"
COMPONENTS = (
    '("@request-target" "@authority" "audiohook-organization-id" "audiohook-session-id" '
    '"audiohook-correlation-id" "x-api-key")'
)


def _headers(uri: str, created: int, lifetime: int = 30) -> dict[str, str]:
    return upgrade_headers(
        Endpoint.parse(uri),
        api_key=API_KEY,
        client_secret=SECRET,
        organization_id=ORG,
        session_id=SESSION,
        correlation_id=CORRELATION,
        nonce=NONCE,
        created=created,
        lifetime=lifetime,
    )


def test_client_headers_reproduce_the_protocol_vector() -> None:
    headers = _headers("wss://audiohook.example.com/api/v1/audiohook/ws", 1641013200)
    assert list(headers) == [
        "Audiohook-Organization-Id",
        "Audiohook-Session-Id",
        "Audiohook-Correlation-Id",
        "X-API-KEY",
        "Signature-Input",
        "Signature",
    ]
    assert headers["Audiohook-Organization-Id"] == ORG
    assert headers["Audiohook-Session-Id"] == SESSION
    assert headers["Audiohook-Correlation-Id"] == CORRELATION
    assert headers["X-API-KEY"] == API_KEY
    assert headers["Signature-Input"] == (
        f'sig1={COMPONENTS};keyid="{API_KEY}";nonce="{NONCE}";alg="hmac-sha256";'
        "created=1641013200;expires=1641013230"
    )
    assert headers["Signature"] == "sig1=:EySAbkK4NHku3eKUBlE+xEHSMJUauhk9nPhaYrgoOLE=:"


def test_client_headers_reproduce_the_second_vector() -> None:
    # Same inputs, another target, and the documentation's far-future `expires`.
    uri = "wss://audiohook.example.com:443/api/v1/voicebiometrics/ws"
    headers = _headers(uri, 1641013200, lifetime=3282026430 - 1641013200)
    assert headers["Signature-Input"].endswith(";created=1641013200;expires=3282026430")
    assert headers["Signature"] == "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:"


def test_a_different_target_changes_the_signature() -> None:
    plain = _headers("wss://audiohook.example.com/api/v1/audiohook/ws", 1641013200)
    query = _headers("wss://audiohook.example.com/api/v1/audiohook/ws?x=1", 1641013200)
    assert plain["Signature"] != query["Signature"]


@pytest.mark.parametrize(
    ("uri", "authority", "target"),
    [
        (
            "wss://audiohook.example.com/api/v1/audiohook/ws",
            "audiohook.example.com",
            "/api/v1/audiohook/ws",
        ),
        ("wss://AudioHook.Example.COM:443/ws", "audiohook.example.com", "/ws"),
        ("wss://h.example.com:8443/ws?x=1&y=2", "h.example.com:8443", "/ws?x=1&y=2"),
        ("ws://127.0.0.1:80/ws", "127.0.0.1", "/ws"),
        ("ws://127.0.0.1:8080", "127.0.0.1:8080", "/"),
        ("ws://[::1]:9000/a", "[::1]:9000", "/a"),
    ],
)
def test_endpoint_derives_authority_and_request_target(
    uri: str, authority: str, target: str
) -> None:
    endpoint = Endpoint.parse(uri)
    assert (endpoint.authority, endpoint.request_target) == (authority, target)


@pytest.mark.parametrize("uri", ["http://example.com/ws", "example.com", "wss://"])
def test_endpoint_rejects_non_websocket_uris(uri: str) -> None:
    with pytest.raises(ValueError, match="not a ws"):
        Endpoint.parse(uri)


@pytest.mark.parametrize("secret", [None, ""])
def test_no_secret_means_an_unsigned_upgrade(secret: str | None) -> None:
    headers = upgrade_headers(
        Endpoint.parse("ws://127.0.0.1:8080/ws"),
        api_key=API_KEY,
        client_secret=secret,
        organization_id=ORG,
        session_id=SESSION,
        correlation_id=CORRELATION,
    )
    assert "Signature" not in headers
    assert "Signature-Input" not in headers
    assert headers["X-API-KEY"] == API_KEY


def test_fresh_signatures_use_a_new_nonce_each_time() -> None:
    endpoint = Endpoint.parse("ws://127.0.0.1:8080/ws")
    inputs = {
        upgrade_headers(
            endpoint,
            api_key=API_KEY,
            client_secret=SECRET,
            organization_id=ORG,
            session_id=SESSION,
            correlation_id=CORRELATION,
        )["Signature-Input"]
        for _ in range(3)
    }
    assert len(inputs) == 3
