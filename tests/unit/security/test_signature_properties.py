"""Property tests: any change to what was signed breaks verification; garbage never crashes."""

from __future__ import annotations

import base64
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.security.signature import (
    REQUIRED_COMPONENTS,
    Outcome,
    SignedRequest,
    canonical_authority,
    canonicalize_field_value,
    collect_headers,
    request_target,
    signature_params_value,
    unfold_obs_fold,
)
from tests.unit.security.vectors import (
    AUTHORITY,
    CREATED,
    TARGET,
    default_params,
    integration,
    request,
    signed_headers,
    verifier,
)

NOW = CREATED + 2
CHECK = verifier(integration())
BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Header text as HTTP allows it in a value: printable ASCII (leading/trailing blanks are
# trimmed by canonicalisation, so they are not "changes").
header_text = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60
)


def test_baseline_verifies() -> None:
    assert CHECK.verify(request(signed_headers()), NOW).outcome is Outcome.VERIFIED


@BOUNDED
@given(name=st.sampled_from(REQUIRED_COMPONENTS[2:]), value=header_text)
def test_changing_a_covered_header_fails(name: str, value: str) -> None:
    headers = signed_headers()
    if value == headers[name][0]:
        return
    headers[name] = [value]
    result = CHECK.verify(request(headers), NOW)
    assert not result.accepted
    # a new X-API-KEY no longer matches keyid; any other header breaks the MAC
    expected = Outcome.PRECONDITION if name == "x-api-key" else Outcome.FAILED
    assert result.outcome is expected


@BOUNDED
@given(suffix=header_text, cut=st.integers(min_value=1, max_value=len(TARGET)))
def test_changing_the_target_fails(suffix: str, cut: int) -> None:
    for target in (TARGET + suffix, TARGET[:-cut], TARGET + "?" + suffix):
        result = CHECK.verify(request(signed_headers(), target=target), NOW)
        assert result.outcome is Outcome.FAILED


@BOUNDED
@given(authority=header_text)
def test_changing_the_authority_fails(authority: str) -> None:
    if authority == AUTHORITY:
        return
    result = CHECK.verify(request(signed_headers(), authority=authority), NOW)
    assert result.outcome is Outcome.FAILED


@BOUNDED
@given(
    name=st.sampled_from(["keyid", "nonce", "alg", "created", "expires"]),
    text=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    number=st.integers(min_value=0, max_value=10**15 - 1),
)
def test_changing_a_signature_parameter_fails(name: str, text: str, number: int) -> None:
    original = dict(default_params())
    value: str | int = number if isinstance(original[name], int) else text
    if value == original[name]:
        return
    params = default_params(**{name: value})
    headers = signed_headers()  # keep the original MAC, present different parameters
    headers["signature-input"] = [f"sig1={signature_params_value(REQUIRED_COMPONENTS, params)}"]
    result = CHECK.verify(request(headers), NOW)
    assert not result.accepted
    assert result.outcome is not Outcome.VERIFIED


@BOUNDED
@given(index=st.integers(min_value=0, max_value=31), flip=st.integers(min_value=1, max_value=255))
def test_changing_any_byte_of_the_signature_fails(index: int, flip: int) -> None:
    headers = signed_headers()
    mac = bytearray(base64.b64decode(headers["signature"][0][len("sig1=:") : -1]))
    mac[index] ^= flip
    headers["signature"] = [f"sig1=:{base64.b64encode(bytes(mac)).decode()}:"]
    result = CHECK.verify(request(headers), NOW)
    assert result.outcome is Outcome.FAILED


@BOUNDED
@given(
    signature_input=st.binary(max_size=300),
    signature=st.binary(max_size=120),
)
def test_random_bytes_never_raise(signature_input: bytes, signature: bytes) -> None:
    headers = signed_headers()
    headers["signature-input"] = [signature_input.decode("latin-1")]
    headers["signature"] = [signature.decode("latin-1")]
    result = CHECK.verify(request(headers), NOW)
    assert result.outcome in set(Outcome) - {Outcome.VERIFIED}
    assert not result.accepted


sf_alphabet = st.sampled_from(
    list('sig1=():;,"@\\ abcdefghijklmnopqrstuvwxyz-_.*?0123456789+/ABCDEFGH\t')
)


@BOUNDED
@given(
    prefix=st.text(sf_alphabet, max_size=80),
    signature=st.text(sf_alphabet, max_size=80),
)
def test_structured_field_lookalikes_never_raise(prefix: str, signature: str) -> None:
    # Mostly-valid structured fields reach deeper into the verifier than random bytes.
    good = signed_headers()
    for signature_input in (prefix, good["signature-input"][0][: len(prefix)] + prefix):
        headers = signed_headers()
        headers["signature-input"] = [signature_input]
        headers["signature"] = [signature or good["signature"][0]]
        result = CHECK.verify(request(headers), NOW)
        assert result.outcome is not Outcome.VERIFIED


@BOUNDED
@given(field=st.sampled_from(["signature-input", "signature"]), raw=st.binary(max_size=300))
def test_random_bytes_in_one_field_with_the_other_valid_never_raise(field: str, raw: bytes) -> None:
    # With its partner intact, each structured field reaches its own parser and checks.
    headers = signed_headers()
    headers[field] = [raw.decode("latin-1")]
    result = CHECK.verify(request(headers), NOW)
    assert result.outcome is not Outcome.VERIFIED
    assert not result.accepted


@BOUNDED
@given(
    component=st.sampled_from(["@request-target", "@authority", *REQUIRED_COMPONENTS[2:]]),
    raw=st.binary(min_size=1, max_size=120),
    repeat=st.booleans(),
)
def test_random_bytes_in_a_signed_component_never_raise(
    component: str, raw: bytes, repeat: bool
) -> None:
    """Raw request bytes (as the ASGI scope hands them over: any octet, CR/LF, non-ASCII)
    in whatever the signature base is built from."""
    good = signed_headers()
    pairs: list[tuple[bytes, bytes]] = [
        (name.encode(), value.encode()) for name, values in good.items() for value in values
    ]
    target: bytes = TARGET.encode()
    host: str | None = AUTHORITY
    if component == "@request-target":
        target = raw
    elif component == "@authority":
        host = canonical_authority(raw.decode("latin-1"))
    else:
        pairs = [(n, v) for n, v in pairs if n.decode() != component]
        pairs += [(component.encode(), raw)] * (2 if repeat else 1)
    signed = SignedRequest(
        request_target=request_target(target, b""), authority=host, headers=collect_headers(pairs)
    )
    if component == "@request-target":
        unchanged = signed.request_target == TARGET
    elif component == "@authority":
        unchanged = host == AUTHORITY
    else:
        unchanged = canonicalize_field_value(signed.headers[component]) == good[component][0]
    result = CHECK.verify(signed, NOW)
    # Verified exactly when the bytes canonicalise to what was signed.
    assert (result.outcome is Outcome.VERIFIED) == unchanged, result


# RFC 9112 section 5.2's obs-fold as a regular expression: the reference for the one-pass
# unfolding (which it cannot be itself: it backtracks quadratically on a run of blanks).
_OBS_FOLD_REFERENCE = re.compile(r"[ \t]*\r\n[ \t]+")


@BOUNDED
@given(st.lists(st.sampled_from([" ", "\t", "\r\n", "\r", "\n", "a", ","]), max_size=30))
def test_obs_fold_unfolding_matches_the_rfc_pattern(pieces: list[str]) -> None:
    value = "".join(pieces)
    assert unfold_obs_fold(value) == _OBS_FOLD_REFERENCE.sub(" ", value)
