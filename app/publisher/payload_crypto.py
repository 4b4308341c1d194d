"""Audio encryption at rest: AES-256-GCM, one fresh 96-bit nonce per stream entry.

The associated data binds a ciphertext to its session and sample offset, so an entry copied
into another session or moved on the timeline fails to decrypt. Keys come from the setting
`payload_encryption_keys` (JSON map key id -> base64 of 32 bytes); the key id is stored with
each entry so keys can be rotated: add the new key, switch the integration's
`encryption_key_id`, keep the old key for consumers until old streams expired.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
_AAD_PREFIX: Final = b"audiohook-audio-v1|"


class PayloadKeyError(ValueError):
    """Unusable key configuration. The message never contains key material."""


class DecryptionError(ValueError):
    """Unknown key id, or a ciphertext that does not authenticate."""


def parse_keys(raw_json: str) -> dict[str, bytes]:
    """Key id -> 32-byte key from the JSON map of the settings (empty string: no keys)."""
    if not raw_json.strip():
        return {}
    try:
        data = json.loads(raw_json)
    except json.JSONDecodeError as exc:
        raise PayloadKeyError("payload_encryption_keys is not valid JSON") from exc
    if not isinstance(data, dict):
        raise PayloadKeyError("payload_encryption_keys must be a JSON object")
    keys: dict[str, bytes] = {}
    for key_id, encoded in data.items():
        if not key_id or not isinstance(encoded, str):
            raise PayloadKeyError("each payload key needs a non-empty id and a base64 string")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise PayloadKeyError(f"payload key {key_id!r} is not valid base64") from exc
        if len(key) != KEY_BYTES:
            raise PayloadKeyError(f"payload key {key_id!r} must decode to {KEY_BYTES} bytes")
        keys[key_id] = key
    return keys


def associated_data(session_id: str, sample_offset: int) -> bytes:
    return b"%s%s|%d" % (_AAD_PREFIX, session_id.encode(), sample_offset)


class PayloadCipher:
    """Encrypts the audio of one session with one key."""

    __slots__ = ("_aead", "key_id", "session_id")

    def __init__(self, key_id: str, key: bytes, session_id: str) -> None:
        self.key_id = key_id
        self.session_id = session_id
        self._aead = AESGCM(key)

    def encrypt(self, sample_offset: int, data: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext with the 16-byte tag appended)."""
        nonce = os.urandom(NONCE_BYTES)
        aad = associated_data(self.session_id, sample_offset)
        return nonce, self._aead.encrypt(nonce, data, aad)


def decrypt(
    keys: Mapping[str, bytes],
    key_id: str,
    nonce: bytes,
    ciphertext: bytes,
    session_id: str,
    sample_offset: int,
) -> bytes:
    key = keys.get(key_id)
    if key is None:
        raise DecryptionError(f"no key with id {key_id!r}")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated_data(session_id, sample_offset))
    except InvalidTag as exc:
        raise DecryptionError("ciphertext does not authenticate") from exc
