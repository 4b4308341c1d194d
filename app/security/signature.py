"""AudioHook HTTP message signatures (HMAC-SHA256 over an RFC 9421-style signature base).

Pure code: no I/O and no clock of its own (`now` is passed in). The signer (`sign_request`,
used by the client, the tests and the benchmark) and the verifier build the signature base
with the same function, `signature_base`, so the two cannot drift apart.

Structured fields (RFC 8941) are parsed with `http_sf`: it implements the whole grammar
(dictionaries, inner lists, parameters, byte sequences) and rejects malformed input with one
exception type, which the verifier maps to INVALID. The form Genesys sends takes a faster path
to the same result first (app/security/signature_fields.py).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import http_sf

from app.security.integrations import Integration
from app.security.signature_fields import canonical_dictionary

ALGORITHM = "hmac-sha256"
DEFAULT_LABEL = "sig1"
# The components Genesys signs, in the order it lists them; all of them must be covered.
REQUIRED_COMPONENTS: tuple[str, ...] = (
    "@request-target",
    "@authority",
    "audiohook-organization-id",
    "audiohook-session-id",
    "audiohook-correlation-id",
    "x-api-key",
)
# Derived components this verifier can resolve for a WebSocket upgrade request.
_RESOLVABLE_DERIVED = frozenset({"@request-target", "@authority", "@method", "@path", "@query"})
# Derived components that exist but cannot be resolved reliably here (the scheme is lost
# behind a TLS-terminating proxy) or need parameters this scheme does not use.
_UNSUPPORTED_DERIVED = frozenset({"@scheme", "@target-uri", "@query-param", "@query-params"})
# Component parameters defined by RFC 9421 that this scheme does not use.
_KNOWN_COMPONENT_PARAMS = frozenset({"sf", "key", "bs", "req", "tr", "name"})
_SIGNATURE_PARAM_TYPES: Mapping[str, type] = {
    "keyid": str,
    "nonce": str,
    "alg": str,
    "created": int,
    "expires": int,
}
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_MAX_SF_INTEGER = 999_999_999_999_999
_MAX_NONCE_LENGTH = 256  # bounds the replay-cache key
# After a failed MAC for a known API key, the verifier tries a few other `@authority` values
# (Host with or without its port, X-Forwarded-Host) to name the cause in the log. The work is
# bounded: at most this many extra HMACs, for a known and enabled integration only.
MAX_AUTHORITY_DIAGNOSIS_MACS = 2
_MAX_AUTHORITY_LENGTH = 255
_DEFAULT_PORTS = frozenset({"80", "443"})
# Bounds checked before any parsing or crypto, so a hostile header costs microseconds. Genesys
# sends one member of about 300 bytes covering six components; the structured-field parser
# costs about half a microsecond per byte, so the byte cap bounds its work.
MAX_SIGNATURE_FIELD_BYTES = 2048  # each of Signature and Signature-Input, all lines joined
MAX_SIGNATURE_MEMBERS = 4  # labels per field (RFC 9421 allows several signatures)
MAX_COVERED_COMPONENTS = 16
# Cheap upper bounds on what an acceptable field holds, counted before parsing: every
# component is an sf-string, a member has at most five parameters (keyid, nonce, alg, created,
# expires), three of them strings; items are separated by spaces, parameters by semicolons.
_MAX_SIGNATURE_QUOTES = 2 * MAX_SIGNATURE_MEMBERS * (MAX_COVERED_COMPONENTS + 3)
_MAX_SIGNATURE_SEPARATORS = MAX_SIGNATURE_MEMBERS * (MAX_COVERED_COMPONENTS + 8)

SignatureParam = tuple[str, str | int]


class Outcome(enum.StrEnum):
    VERIFIED = "VERIFIED"
    UNSIGNED = "UNSIGNED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    INVALID = "INVALID"
    PRECONDITION = "PRECONDITION"
    UNSUPPORTED = "UNSUPPORTED"


# --- serialisation (shared by signer and verifier) -----------------------------------------------


def serialize_sf_string(value: str) -> str:
    """RFC 8941 sf-string: printable ASCII only; backslash escapes `"` and `\\`."""
    if not (value.isascii() and value.isprintable()):  # no regular expression: every upgrade
        raise ValueError("sf-string allows printable ASCII only")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def serialize_sf_integer(value: int) -> str:
    if isinstance(value, bool) or not -_MAX_SF_INTEGER <= value <= _MAX_SF_INTEGER:
        raise ValueError("sf-integer out of range")
    return str(value)


def signature_params_value(components: Sequence[str], params: Sequence[SignatureParam]) -> str:
    """The inner list `("c1" "c2");k="v";n=1` that is both the `Signature-Input` member and
    the value of the `@signature-params` line. Parameters keep the given order."""
    items = " ".join(serialize_sf_string(name) for name in components)
    out = [f"({items})"]
    for key, value in params:
        if not _SF_KEY.fullmatch(key):
            raise ValueError("invalid signature parameter name")
        text = serialize_sf_string(value) if isinstance(value, str) else serialize_sf_integer(value)
        out.append(f";{key}={text}")
    return "".join(out)


def signature_base(component_values: Sequence[tuple[str, str]], params_value: str) -> bytes:
    """One `"<name>": <value>` line per covered component, then the `@signature-params` line;
    LF-separated, no trailing LF, ASCII (a non-ASCII value raises ValueError)."""
    lines = [f"{serialize_sf_string(name)}: {value}" for name, value in component_values]
    lines.append(f'"@signature-params": {params_value}')
    text = "\n".join(lines)
    if "\n" in "".join(value for _, value in component_values) or not text.isascii():
        raise ValueError("component values must be single-line ASCII")
    return text.encode("ascii")


def compute_mac(key: bytes, base: bytes) -> bytes:
    return hmac.new(key, base, hashlib.sha256).digest()


def canonicalize_field_value(values: Sequence[str]) -> str:
    """RFC 9421 field canonicalisation: trim, unfold obsolete line folding, join with ", "."""
    return ", ".join(unfold_obs_fold(value).strip(" \t") for value in values)


def unfold_obs_fold(value: str) -> str:
    """Each obsolete line fold (CRLF then spaces or tabs, RFC 9112 section 5.2) and the spaces or
    tabs before it become one space; a CRLF not followed by either stays.

    Not a regular expression: `[ \t]*\r\n[ \t]+` is tried from every position of a run of
    spaces, so a header of 8 KB of them (no credentials needed) cost quadratic time."""
    if "\r\n" not in value:
        return value
    unfolded: list[str] = []
    since_fold: list[str] = []  # the pieces since the last fold, rejoined with their CRLFs
    for index, piece in enumerate(value.split("\r\n")):
        rest = piece.lstrip(" \t")
        if index and len(rest) < len(piece):
            unfolded.append("\r\n".join(since_fold).rstrip(" \t"))
            unfolded.append(" ")
            since_fold = [rest]
        else:
            since_fold.append(piece)
    unfolded.append("\r\n".join(since_fold))
    return "".join(unfolded)


def sign_request(
    *,
    api_key: str,
    client_secret_b64: str,
    request_target: str,
    authority: str,
    organization_id: str,
    session_id: str,
    correlation_id: str,
    nonce: str | None = None,
    created: int | None = None,
    lifetime: int = 30,
    label: str = DEFAULT_LABEL,
) -> dict[str, str]:
    """`Signature-Input` and `Signature` headers the way the Genesys client builds them."""
    if not _SF_KEY.fullmatch(label):
        raise ValueError("invalid signature label")
    if nonce is None:
        nonce = base64.b64encode(secrets.token_bytes(18)).decode("ascii")
    if created is None:
        created = int(time.time())
    params: list[SignatureParam] = [
        ("keyid", api_key),
        ("nonce", nonce),
        ("alg", ALGORITHM),
        ("created", created),
        ("expires", created + lifetime),
    ]
    values = (request_target, authority, organization_id, session_id, correlation_id, api_key)
    params_value = signature_params_value(REQUIRED_COMPONENTS, params)
    base = signature_base(list(zip(REQUIRED_COMPONENTS, values, strict=True)), params_value)
    key = base64.b64decode(client_secret_b64, validate=True)
    mac = base64.b64encode(compute_mac(key, base)).decode("ascii")
    return {"Signature-Input": f"{label}={params_value}", "Signature": f"{label}=:{mac}:"}


# --- request description --------------------------------------------------------------------------


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def collect_headers(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> dict[str, list[str]]:
    """Lower-cased header name -> every value in arrival order (bytes decoded as latin-1)."""
    headers: dict[str, list[str]] = {}
    for name, value in pairs:
        headers.setdefault(_text(name).lower(), []).append(_text(value))
    return headers


def request_target(raw_path: str | bytes, query_string: str | bytes = b"") -> str:
    """`@request-target`: the raw path plus `?query` when there is a query."""
    path, query = _text(raw_path), _text(query_string)
    return f"{path}?{query}" if query else path


def canonical_authority(host: str | None) -> str | None:
    """`@authority` from a Host header (or the configured public authority): trimmed, lower-case."""
    if host is None:
        return None
    host = host.strip(" \t").lower()
    return host or None


def _split_port(authority: str) -> tuple[str, str | None]:
    """`host[:port]` -> (host, port or None); an IPv6 literal keeps its brackets."""
    head, sep, tail = authority.rpartition(":")
    if sep and tail.isdigit() and (not head.startswith("[") or head.endswith("]")):
        return head, tail
    return authority, None


def authority_variants(
    used: str | None,
    host: str | None,
    forwarded_host: Sequence[str] = (),
    forwarded_port: Sequence[str] = (),
    *,
    limit: int = MAX_AUTHORITY_DIAGNOSIS_MACS,
) -> tuple[str, ...]:
    """Other `@authority` values a client may have signed when `used` does not verify, most
    likely first: the Host header (when a configured public authority was used instead),
    X-Forwarded-Host (completed with X-Forwarded-Port when it has no port, then as sent),
    Host completed with X-Forwarded-Port, or Host without its port. Only for diagnosis: a
    signature that verifies under one is still refused."""
    found: list[str] = []

    def add(value: str | None) -> None:
        candidate = canonical_authority(value)
        if (
            candidate is not None
            and candidate != used
            and candidate not in found
            and len(candidate) <= _MAX_AUTHORITY_LENGTH
            and _PRINTABLE_ASCII.fullmatch(candidate)
        ):
            found.append(candidate)

    first_forwarded = (
        canonical_authority(forwarded_host[0].split(",")[0]) if forwarded_host else None
    )
    port = forwarded_port[0].split(",")[0].strip() if forwarded_port else ""
    port = port if port.isascii() and port.isdigit() and port not in _DEFAULT_PORTS else ""
    add(host)
    if first_forwarded is not None:
        if port and _split_port(first_forwarded)[1] is None:
            add(f"{first_forwarded}:{port}")
        add(first_forwarded)
    if host is not None:
        bare, host_port = _split_port(canonical_authority(host) or "")
        if host_port is None and port:
            add(f"{bare}:{port}")
        elif host_port is not None:
            add(bare)
    return tuple(found[:limit])


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What the verifier needs from an upgrade request."""

    request_target: str
    authority: str | None
    headers: Mapping[str, Sequence[str]]  # lower-case names, every value in order
    method: str = "GET"
    # Tried only to explain a failed MAC (see `authority_variants`); never to accept.
    authority_variants: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class VerificationResult:
    """Outcome plus a reason for logs and metrics; never carries a secret or signature value."""

    outcome: Outcome
    reason: str
    accepted: bool = False
    integration: Integration | None = None
    nonce: str | None = None
    # Latest wall-clock second at which this signature could still be accepted anywhere;
    # the replay cache must remember the nonce at least until then.
    nonce_expires_at: float | None = None
    # On a failed MAC: the other `@authority` under which this signature verifies, if one of
    # the request's variants does (the client signed for it; a proxy changed Host).
    signed_authority: str | None = None


def _fail(outcome: Outcome, reason: str) -> VerificationResult:
    return VerificationResult(outcome=outcome, reason=reason)


class _Rejected(Exception):
    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


def _reject_duplicate(key: str, context: str) -> None:
    raise http_sf.StructuredFieldError(f"duplicate key in {context}")


def _bounded_field(values: Sequence[str]) -> str:
    """The joined field value, refused before parsing when it is larger than any real signature
    field: too many bytes, or more separators or strings than the member, component and
    parameter caps allow. The counts are upper bounds (a comma or space inside a string counts
    too, which real fields never have), so the parser only ever sees small inputs."""
    if sum(len(value) for value in values) + 2 * (len(values) - 1) > MAX_SIGNATURE_FIELD_BYTES:
        raise _Rejected(Outcome.INVALID, "signature field too large")
    joined = ", ".join(values)
    if joined.count(",") >= MAX_SIGNATURE_MEMBERS:
        raise _Rejected(Outcome.INVALID, "too many signature members")
    if joined.count('"') > _MAX_SIGNATURE_QUOTES:
        raise _Rejected(Outcome.INVALID, "too many covered components")
    separators = joined.count(" ") + joined.count(";") + joined.count("\t")
    if separators > _MAX_SIGNATURE_SEPARATORS:
        raise _Rejected(Outcome.INVALID, "too many signature items")
    return joined


def _parse_dictionary(joined: str) -> dict[str, Any]:
    fast = canonical_dictionary(joined)  # the form Genesys sends, parsed the same way
    if fast is not None:
        return fast
    try:
        parsed = http_sf.parse(
            joined.encode("latin-1"), tltype="dictionary", on_duplicate_key=_reject_duplicate
        )
    except (http_sf.StructuredFieldError, ValueError, UnicodeError) as exc:
        raise _Rejected(Outcome.INVALID, "malformed structured field") from exc
    if not isinstance(parsed, dict) or not parsed:
        raise _Rejected(Outcome.INVALID, "empty signature field")
    if len(parsed) > MAX_SIGNATURE_MEMBERS:
        raise _Rejected(Outcome.INVALID, "too many signature members")
    return parsed


@dataclass(slots=True)
class _Signature:
    components: list[str] = field(default_factory=list)
    params: list[SignatureParam] = field(default_factory=list)
    mac: bytes = b""

    def param(self, name: str) -> str | int | None:
        return next((value for key, value in self.params if key == name), None)


def _parse_signature(input_values: Sequence[str], signature_values: Sequence[str]) -> _Signature:
    # Both fields are bounded before either is parsed.
    input_text, signature_text = _bounded_field(input_values), _bounded_field(signature_values)
    inputs = _parse_dictionary(input_text)
    signatures = _parse_dictionary(signature_text)
    label = next(iter(inputs))
    if label not in signatures:
        raise _Rejected(Outcome.INVALID, "signature label missing from Signature")
    mac_member, inputs_member = signatures[label], inputs[label]
    if not (isinstance(mac_member, tuple) and type(mac_member[0]) is bytes and not mac_member[1]):
        raise _Rejected(Outcome.INVALID, "Signature member is not a byte sequence")
    if not (isinstance(inputs_member, tuple) and isinstance(inputs_member[0], list)):
        raise _Rejected(Outcome.INVALID, "Signature-Input member is not an inner list")
    if len(inputs_member[0]) > MAX_COVERED_COMPONENTS:
        raise _Rejected(Outcome.INVALID, "too many covered components")
    sig = _Signature(mac=mac_member[0])
    for item, item_params in inputs_member[0]:
        if type(item) is not str:
            raise _Rejected(Outcome.INVALID, "component identifier is not a string")
        if item_params:
            known = set(item_params) <= _KNOWN_COMPONENT_PARAMS
            outcome = Outcome.UNSUPPORTED if known else Outcome.INVALID
            raise _Rejected(outcome, "component parameters are not supported")
        sig.components.append(item)
    for key, value in inputs_member[1].items():
        expected = _SIGNATURE_PARAM_TYPES.get(key)
        if expected is None:
            raise _Rejected(Outcome.INVALID, "unknown signature parameter")
        if type(value) is not expected or (isinstance(value, int) and value < 0):
            raise _Rejected(Outcome.INVALID, "signature parameter has the wrong type")
        assert isinstance(value, str | int)
        sig.params.append((key, value))
    return sig


class SignatureVerifier:
    """Verifies a request against the integration that owns its API key (docs/protocol.md §2.3).

    Acceptance window, the clock skew allowed in the lenient direction on every bound: `created`
    may be up to `clock_skew` seconds in the future (PRECONDITION beyond that); the signature is
    EXPIRED once `now - clock_skew > created + max_age`, or, when `expires` is present, once
    `now - clock_skew > expires`. (The reference applies the skew the strict way round and so
    accepts a signature only until `created + max_age - clock_skew`.)
    """

    def __init__(
        self,
        lookup: Callable[[str], Integration | None],
        *,
        max_age_seconds: float = 10.0,
        clock_skew_seconds: float = 3.0,
        min_nonce_length: int = 22,
    ) -> None:
        self._lookup = lookup
        self.max_age = max_age_seconds
        self.clock_skew = clock_skew_seconds
        self.min_nonce_length = min_nonce_length
        self._dummy_key = secrets.token_bytes(32)

    def verify(self, request: SignedRequest, now: float) -> VerificationResult:
        try:
            return self._verify(request, now)
        except _Rejected as rejected:
            return _fail(rejected.outcome, rejected.reason)

    def _verify(self, request: SignedRequest, now: float) -> VerificationResult:
        api_key_values = request.headers.get("x-api-key")
        if not api_key_values:
            return _fail(Outcome.PRECONDITION, "X-API-KEY header missing")
        api_key = canonicalize_field_value(api_key_values)
        input_values = request.headers.get("signature-input")
        signature_values = request.headers.get("signature")
        if not input_values and not signature_values:
            return self._unsigned(api_key)
        if not input_values or not signature_values:
            return _fail(Outcome.INVALID, "only one of Signature-Input and Signature present")
        sig = _parse_signature(input_values, signature_values)
        nonce_expires_at = self._check_time(sig, now)
        component_values = self._component_values(sig.components, request)
        params_value = signature_params_value(sig.components, sig.params)
        try:
            base = signature_base(component_values, params_value)
        except ValueError as exc:
            raise _Rejected(Outcome.INVALID, "component value is not single-line ASCII") from exc
        nonce = sig.param("nonce")
        if nonce is None:
            return _fail(Outcome.PRECONDITION, "nonce missing")
        assert isinstance(nonce, str)
        if len(nonce) < self.min_nonce_length:
            return _fail(Outcome.PRECONDITION, "nonce too short")
        if len(nonce) > _MAX_NONCE_LENGTH:
            return _fail(Outcome.INVALID, "nonce too long")
        if sig.param("keyid") != api_key:
            return _fail(Outcome.PRECONDITION, "keyid does not match X-API-KEY")
        alg = sig.param("alg")
        if alg is None:
            return _fail(Outcome.PRECONDITION, "alg missing")
        if alg != ALGORITHM:
            return _fail(Outcome.UNSUPPORTED, "unsupported algorithm")
        integration = self._lookup(api_key)
        keys: Sequence[bytes] = ()
        if integration is not None and integration.enabled:
            keys = integration.secret_keys
        # Unknown key, disabled integration or no secret: spend the same work on a dummy key.
        matched = self._matches(keys or (self._dummy_key,), base, sig.mac) and bool(keys)
        if integration is None:
            return _fail(Outcome.FAILED, "unknown API key")
        if not integration.enabled:
            return _fail(Outcome.FAILED, "integration disabled")
        if not keys:
            return _fail(Outcome.FAILED, "integration has no secret to verify a signature")
        if not matched:
            signed_for = self._signed_authority(
                keys, component_values, params_value, sig.mac, request
            )
            return VerificationResult(
                outcome=Outcome.FAILED,
                reason="signatures do not match",
                signed_authority=signed_for,
            )
        return VerificationResult(
            outcome=Outcome.VERIFIED,
            reason="signature verified",
            accepted=True,
            integration=integration,
            nonce=nonce,
            nonce_expires_at=nonce_expires_at,
        )

    @staticmethod
    def _matches(keys: Sequence[bytes], base: bytes, mac: bytes) -> bool:
        # Every key is tried (no early exit): rotation overlap costs the same either way.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(compute_mac(key, base), mac)
        return matched

    @staticmethod
    def _signed_authority(
        keys: Sequence[bytes],
        component_values: Sequence[tuple[str, str]],
        params_value: str,
        mac: bytes,
        request: SignedRequest,
    ) -> str | None:
        """The first of the request's authority variants under which the MAC verifies, trying
        at most MAX_AUTHORITY_DIAGNOSIS_MACS (variant, key) pairs. Diagnosis only."""
        budget = MAX_AUTHORITY_DIAGNOSIS_MACS
        for variant in request.authority_variants:
            values = [
                (name, variant if name == "@authority" else value)
                for name, value in component_values
            ]
            try:
                base = signature_base(values, params_value)
            except ValueError:
                continue
            for key in keys:
                if budget <= 0:
                    return None
                budget -= 1
                if hmac.compare_digest(compute_mac(key, base), mac):
                    return variant
        return None

    def _unsigned(self, api_key: str) -> VerificationResult:
        integration = self._lookup(api_key)
        if integration is None:
            return _fail(Outcome.UNSIGNED, "unsigned request with an unknown API key")
        if not integration.enabled:
            return _fail(Outcome.UNSIGNED, "unsigned request for a disabled integration")
        if integration.secret_keys:
            return _fail(Outcome.UNSIGNED, "unsigned request; the integration requires a signature")
        return VerificationResult(
            outcome=Outcome.UNSIGNED,
            reason="unsigned request allowed for this integration",
            accepted=True,
            integration=integration,
        )

    def _check_time(self, sig: _Signature, now: float) -> float:
        """Raise on a signature outside its window; return when its nonce may be forgotten."""
        created, expires = sig.param("created"), sig.param("expires")
        if created is None:
            raise _Rejected(Outcome.PRECONDITION, "created missing")
        assert isinstance(created, int)
        if created > now + self.clock_skew:
            raise _Rejected(Outcome.PRECONDITION, "created in the future")
        # The latest `now` at which this signature still verifies.
        last_accepted = created + self.max_age + self.clock_skew
        if expires is not None:
            assert isinstance(expires, int)
            if expires < created:
                raise _Rejected(Outcome.INVALID, "expires before created")
            if now - self.clock_skew > expires:
                raise _Rejected(Outcome.EXPIRED, "signature expired")
            last_accepted = min(last_accepted, expires + self.clock_skew)
        if now - self.clock_skew > created + self.max_age:
            raise _Rejected(Outcome.EXPIRED, "signature too old")
        return float(math.ceil(last_accepted))

    def _component_values(
        self, components: Sequence[str], request: SignedRequest
    ) -> list[tuple[str, str]]:
        if len(set(components)) != len(components):
            raise _Rejected(Outcome.INVALID, "duplicate component")
        values = [(name, self._component_value(name, request)) for name in components]
        if not set(REQUIRED_COMPONENTS) <= set(components):
            raise _Rejected(Outcome.PRECONDITION, "required component not covered")
        return values

    @staticmethod
    def _component_value(name: str, request: SignedRequest) -> str:
        if name != name.lower():
            raise _Rejected(Outcome.INVALID, "component name not lower-case")
        if name.startswith("@"):
            if name == "@signature-params" or name == "@status":
                raise _Rejected(Outcome.INVALID, "component not allowed in a request signature")
            if name in _UNSUPPORTED_DERIVED:
                raise _Rejected(Outcome.UNSUPPORTED, "derived component not supported")
            if name not in _RESOLVABLE_DERIVED:
                raise _Rejected(Outcome.INVALID, "unknown derived component")
            path, _, query = request.request_target.partition("?")
            derived = {
                "@request-target": request.request_target,
                "@authority": request.authority,
                "@method": request.method.upper(),
                "@path": path,
                "@query": "?" + query,
            }[name]
            if derived is None:
                raise _Rejected(Outcome.PRECONDITION, "covered component missing")
            return derived
        if name in ("signature", "signature-input"):
            raise _Rejected(Outcome.UNSUPPORTED, "signature fields cannot be covered")
        values = request.headers.get(name)
        if not values:
            raise _Rejected(Outcome.PRECONDITION, "covered header missing")
        return canonicalize_field_value(values)
