"""A fast path for the signature fields as Genesys sends them (docs/protocol.md §2.2).

Each of `Signature-Input` and `Signature` holds one member, written the way an RFC 8941
serializer writes it: `sig1=("@request-target" ... "x-api-key");keyid="...";nonce="...";
alg="hmac-sha256";created=1641013200;expires=1641013230` and `sig1=:<base64>:`. The generic
structured-field parser (http_sf) spent about a quarter of a signature check's instructions on
them, a few small function calls per character; one regular expression per field does the same
work.

`canonical_dictionary` returns exactly what `http_sf.parse(..., tltype="dictionary")` does for
a field of that form, and None for anything else: several members, optional whitespace,
escapes in strings, integers with leading zeros, parameter types other than strings and
integers, parameters on components, a duplicate parameter, unpadded base64. Those go to the
generic parser, which decides them as before (tests/unit/security/test_signature_fields.py
compares the two on thousands of mutated fields). Nothing here judges the member's meaning:
the verifier checks the result whichever parser produced it.
"""

from __future__ import annotations

import base64
import re
from typing import Any

# Possessive repeats (`*+`): a near miss fails where it stops, with no backtracking, so a hostile
# field of the verifier's maximum size costs this path no more than the generic parser.
_KEY = r"[a-z*][a-z0-9_\-.*]*+"
# Printable ASCII except `"` and `\`: a string with an escape is left to the generic parser.
_STRING = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*+"'
_INTEGER = r"(?:0|[1-9][0-9]{0,14}+)"  # as serialized: no sign (negative ones go generic)
_BASE64 = r"(?:[A-Za-z0-9+/]{4})*+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"

_INNER_LIST_MEMBER = re.compile(
    rf"({_KEY})=\(({_STRING}(?: {_STRING})*+)\)((?:;{_KEY}=(?:{_STRING}|{_INTEGER}))*+)"
)
_BYTE_SEQUENCE_MEMBER = re.compile(rf"({_KEY})=:({_BASE64}):")
_ITEM = re.compile(_STRING)
_PARAMETER = re.compile(rf";({_KEY})=({_STRING}|{_INTEGER})")


def canonical_dictionary(text: str) -> dict[str, Any] | None:
    """`text` parsed as http_sf parses a one-member dictionary in serialized form, or None."""
    if text.endswith(":"):
        return _byte_sequence(text)
    member = _INNER_LIST_MEMBER.fullmatch(text)
    if member is not None:
        label, items, parameters = member.groups()
        params: dict[str, str | int] = {}
        for found in _PARAMETER.finditer(parameters):
            key, value = found.groups()
            if key in params:
                return None  # the generic parser refuses it, and says why
            params[key] = value[1:-1] if value[0] == '"' else int(value)
        return {label: ([(item[1:-1], {}) for item in _ITEM.findall(items)], params)}
    return None


def _byte_sequence(text: str) -> dict[str, Any] | None:
    member = _BYTE_SEQUENCE_MEMBER.fullmatch(text)
    if member is None:
        return None
    label, encoded = member.groups()
    return {label: (base64.b64decode(encoded, validate=True), {})}
