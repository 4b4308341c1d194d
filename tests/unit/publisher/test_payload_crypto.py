"""AES-256-GCM payload encryption: fresh nonces, bound to session and offset."""

from __future__ import annotations

import base64
import json

import pytest

from app.publisher.payload_crypto import (
    NONCE_BYTES,
    DecryptionError,
    PayloadCipher,
    PayloadKeyError,
    decrypt,
    parse_keys,
)

KEY = bytes(range(32))
KEYS = {"k1": KEY}


def test_round_trip_with_fresh_nonce() -> None:
    cipher = PayloadCipher("k1", KEY, "session-1")
    nonce1, sealed1 = cipher.encrypt(1600, b"audio" * 100)
    nonce2, sealed2 = cipher.encrypt(1600, b"audio" * 100)
    assert len(nonce1) == NONCE_BYTES
    assert nonce1 != nonce2
    assert sealed1 != sealed2
    assert len(sealed1) == 500 + 16
    assert decrypt(KEYS, "k1", nonce1, sealed1, "session-1", 1600) == b"audio" * 100


@pytest.mark.parametrize(
    ("key_id", "session_id", "offset"),
    [("k1", "session-2", 1600), ("k1", "session-1", 3200), ("k2", "session-1", 1600)],
)
def test_wrong_session_offset_or_key_fails(key_id: str, session_id: str, offset: int) -> None:
    nonce, sealed = PayloadCipher("k1", KEY, "session-1").encrypt(1600, b"x" * 10)
    keys = {**KEYS, "k2": bytes(32)}
    with pytest.raises(DecryptionError):
        decrypt(keys, key_id, nonce, sealed, session_id, offset)


def test_unknown_key_id_and_tampering() -> None:
    nonce, sealed = PayloadCipher("k1", KEY, "s").encrypt(0, b"abc")
    with pytest.raises(DecryptionError, match="no key"):
        decrypt({}, "k1", nonce, sealed, "s", 0)
    with pytest.raises(DecryptionError):
        decrypt(KEYS, "k1", nonce, bytes([sealed[0] ^ 1]) + sealed[1:], "s", 0)


def test_parse_keys() -> None:
    encoded = base64.b64encode(KEY).decode()
    assert parse_keys("") == {}
    assert parse_keys(json.dumps({"k1": encoded, "k2": encoded})) == {"k1": KEY, "k2": KEY}


@pytest.mark.parametrize(
    "raw",
    ["not json", "[]", '{"k1": 5}', '{"": "AAAA"}', '{"k1": "***"}',
     json.dumps({"k1": base64.b64encode(bytes(16)).decode()})],
)  # fmt: skip
def test_parse_keys_rejects_bad_configuration_without_echoing_keys(raw: str) -> None:
    with pytest.raises(PayloadKeyError) as caught:
        parse_keys(raw)
    assert "AAAA" not in str(caught.value)
