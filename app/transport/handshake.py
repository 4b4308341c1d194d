"""The plain WebSocket upgrade (RFC 6455 section 4.2.1), checked on what httptools already
parsed, so that the common case skips a second parse of the request head.

uvicorn hands the WebSocket layer the request head serialized again, and websockets parses it
once more, checks it and builds its response before the application has even looked at it:
about a sixth of an accepted call's upgrade. `plain_upgrade_key` recognises the request that
websockets would accept as it is, with nothing to negotiate: GET over HTTP/1.1, one
`Upgrade: websocket`, `Connection` naming `upgrade`, one valid key, version 13, no
subprotocols offered (nor extensions, unless the server has none to offer: websockets then
ignores the offer unread), and every line within websockets' own limits. Anything else goes
the general way, and gets websockets' own answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from typing import Final

# websockets' limits (set from its environment variables): a longer line or more headers it
# refuses.
from websockets.http11 import MAX_LINE_LENGTH as MAX_LINE_BYTES
from websockets.http11 import MAX_NUM_HEADERS as MAX_HEADERS

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")  # RFC 9110 section 5.6.2
# No control characters, and no trailing whitespace: httptools keeps it, websockets strips it,
# so the application would see another value than the general way gives it.
_FIELD_VALUE = re.compile(rb"(?:[\x09\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?")
_REQUEST_TARGET = re.compile(rb"/[\x21-\x22\x24-\x7e]*")  # origin-form: ASCII, no '#'
EXTENSIONS, SUBPROTOCOLS = b"sec-websocket-extensions", b"sec-websocket-protocol"


def plain_upgrade_key(
    method: bytes,
    http_version: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    extensions_ignored: bool,
) -> bytes | None:
    """The request's Sec-WebSocket-Key when it is a plain upgrade (above), else None.
    `headers`: names lowercased, as uvicorn's httptools protocol keeps them;
    `extensions_ignored`: the server offers no extension (no per-message deflate)."""
    if method != b"GET" or http_version != "1.1" or len(headers) > MAX_HEADERS:
        return None
    if len(target) > MAX_LINE_BYTES - 16 or not _REQUEST_TARGET.fullmatch(target):
        return None
    keys: list[bytes] = []
    upgrades: list[bytes] = []
    versions: list[bytes] = []
    connection_upgrade = False
    origins = 0
    for name, value in headers:
        if len(name) + len(value) + 4 > MAX_LINE_BYTES:
            return None
        if not valid_header(name, value):
            return None
        if name == b"connection":
            for option in value.split(b","):
                option = option.strip(b" \t")
                if not _TOKEN.fullmatch(option):
                    return None
                connection_upgrade = connection_upgrade or option.lower() == b"upgrade"
        elif name == b"upgrade":
            upgrades.append(value)
        elif name == b"sec-websocket-key":
            keys.append(value)
        elif name == b"sec-websocket-version":
            versions.append(value)
        elif name == b"origin":
            origins += 1
        elif name == SUBPROTOCOLS or (name == EXTENSIONS and not extensions_ignored):
            return None
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return None  # a body: websockets refuses it
    if not connection_upgrade or origins > 1 or versions != [b"13"] or len(keys) != 1:
        return None
    if len(upgrades) != 1 or upgrades[0].strip(b" \t").lower() != b"websocket":
        return None
    try:
        if len(base64.b64decode(keys[0], validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    return keys[0]


def valid_header(name: bytes, value: bytes) -> bool:
    """A header websockets would take as it is: a token name, a value without control
    characters (its serializer refuses CR and LF in a response) or trailing whitespace."""
    return bool(_TOKEN.fullmatch(name) and _FIELD_VALUE.fullmatch(value))


def accept_value(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    # SHA-1 is what the protocol specifies here: a handshake check, not a security function.
    return base64.b64encode(hashlib.sha1(key + _GUID, usedforsecurity=False).digest())
