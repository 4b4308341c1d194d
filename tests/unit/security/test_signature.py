"""Signature signing and verification: the docs/protocol.md §2.8 vectors and every failure mode."""

from __future__ import annotations

import base64
from typing import Any

import http_sf
import pytest

from app.security.signature import (
    REQUIRED_COMPONENTS,
    Outcome,
    SignatureParam,
    SignedRequest,
    canonical_authority,
    canonicalize_field_value,
    collect_headers,
    request_target,
    sign_request,
    signature_params_value,
    unfold_obs_fold,
)
from tests.unit.security.vectors import (
    API_KEY,
    AUTHORITY,
    CORRELATION,
    CREATED,
    NONCE,
    ORG,
    OTHER_SECRET,
    SECRET,
    SESSION,
    TARGET,
    VECTOR2_EXPIRES,
    VECTOR2_SIGNATURE,
    VECTOR2_TARGET,
    VECTOR_BASE,
    VECTOR_MAC_HEX,
    VECTOR_SIGNATURE,
    VECTOR_SIGNATURE_INPUT,
    custom_signed_headers,
    default_params,
    integration,
    plain_headers,
    request,
    signed_headers,
    verifier,
)

# --- the vectors ------------------------------------------------------------------------------


def test_vector_signature_base_is_byte_exact() -> None:
    from app.security.signature import signature_base

    params = default_params()
    values = [TARGET, AUTHORITY, ORG, SESSION, CORRELATION, API_KEY]
    base = signature_base(
        list(zip(REQUIRED_COMPONENTS, values, strict=True)),
        signature_params_value(REQUIRED_COMPONENTS, params),
    )
    assert base == VECTOR_BASE.encode()
    assert len(base) == 587


def test_vector_headers_are_byte_exact() -> None:
    signed = sign_request(
        api_key=API_KEY,
        client_secret_b64=SECRET,
        request_target=TARGET,
        authority=AUTHORITY,
        organization_id=ORG,
        session_id=SESSION,
        correlation_id=CORRELATION,
        nonce=NONCE,
        created=CREATED,
    )
    assert signed == {"Signature-Input": VECTOR_SIGNATURE_INPUT, "Signature": VECTOR_SIGNATURE}
    parsed: Any = http_sf.parse(VECTOR_SIGNATURE.encode(), tltype="dictionary")
    mac = parsed["sig1"][0]
    assert mac.hex() == VECTOR_MAC_HEX


def test_second_vector_is_byte_exact() -> None:
    signed = sign_request(
        api_key=API_KEY,
        client_secret_b64=SECRET,
        request_target=VECTOR2_TARGET,
        authority=AUTHORITY,
        organization_id=ORG,
        session_id=SESSION,
        correlation_id=CORRELATION,
        nonce=NONCE,
        created=CREATED,
        lifetime=VECTOR2_EXPIRES - CREATED,
    )
    assert signed["Signature"] == VECTOR2_SIGNATURE
    assert signed["Signature-Input"].endswith(f"expires={VECTOR2_EXPIRES}")


def test_vector_verifies_with_injected_clock() -> None:
    headers = plain_headers()
    headers["signature-input"] = [VECTOR_SIGNATURE_INPUT]
    headers["signature"] = [VECTOR_SIGNATURE]
    known = integration()
    result = verifier(known).verify(request(headers), CREATED + 2)
    assert result.outcome is Outcome.VERIFIED
    assert result.accepted
    assert result.integration is known
    assert result.nonce == NONCE
    # accepted until created + max age + skew = created + 13: the nonce must outlive that
    assert result.nonce_expires_at == CREATED + 13


def test_second_vector_verifies() -> None:
    headers = signed_headers(target=VECTOR2_TARGET, lifetime=VECTOR2_EXPIRES - CREATED)
    assert headers["signature"] == [VECTOR2_SIGNATURE]
    result = verifier(integration()).verify(request(headers, VECTOR2_TARGET), CREATED + 2)
    assert result.outcome is Outcome.VERIFIED


@pytest.mark.parametrize(
    ("offset", "outcome"),
    [
        (-3.001, Outcome.PRECONDITION),  # created in the future beyond the skew (3)
        (-3, Outcome.VERIFIED),  # within the skew
        (0, Outcome.VERIFIED),
        (10, Outcome.VERIFIED),  # created + max age (10)
        (12.999, Outcome.VERIFIED),  # ... plus the skew, just inside
        (13, Outcome.VERIFIED),  # created + max age + skew: the last instant accepted
        (13.001, Outcome.EXPIRED),
        (14, Outcome.EXPIRED),
    ],
)
def test_acceptance_window(offset: float, outcome: Outcome) -> None:
    result = verifier(integration()).verify(request(signed_headers()), CREATED + offset)
    assert result.outcome is outcome
    assert result.accepted is (outcome is Outcome.VERIFIED)
    if outcome is Outcome.EXPIRED:
        assert result.reason == "signature too old"
    if result.accepted:
        # the replay cache keeps the nonce at least as long as the signature verifies
        assert result.nonce_expires_at is not None
        assert result.nonce_expires_at >= CREATED + 13


def test_changed_query_fails_like_the_reference() -> None:
    result = verifier(integration()).verify(
        request(signed_headers(), target=TARGET + "?x=1"), CREATED + 2
    )
    assert result.outcome is Outcome.FAILED


def test_configurable_age_and_skew() -> None:
    check = verifier(integration(), max_age_seconds=60, clock_skew_seconds=0)
    headers = signed_headers(lifetime=30)
    assert check.verify(request(headers), CREATED + 30).outcome is Outcome.VERIFIED
    # `expires` is enforced even though the age allowance is longer
    late = check.verify(request(headers), CREATED + 31)
    assert (late.outcome, late.reason) == (Outcome.EXPIRED, "signature expired")
    assert check.verify(request(headers), CREATED - 1).outcome is Outcome.PRECONDITION

    short = verifier(integration(), max_age_seconds=5, clock_skew_seconds=1)
    last = short.verify(request(headers), CREATED + 6)  # created + max age + skew
    assert (last.outcome, last.nonce_expires_at) == (Outcome.VERIFIED, CREATED + 6)
    assert short.verify(request(headers), CREATED + 5.999).outcome is Outcome.VERIFIED
    old = short.verify(request(headers), CREATED + 6.001)
    assert (old.outcome, old.reason) == (Outcome.EXPIRED, "signature too old")
    assert short.verify(request(headers), CREATED - 1).outcome is Outcome.VERIFIED
    assert short.verify(request(headers), CREATED - 1.001).outcome is Outcome.PRECONDITION


def test_expires_is_checked_with_the_skew_in_the_lenient_direction() -> None:
    # the reference rejects when expires < now + skew; here: only once now > expires + skew
    headers = signed_headers(lifetime=2)
    check = verifier(integration())
    assert check.verify(request(headers), CREATED + 4).outcome is Outcome.VERIFIED
    assert check.verify(request(headers), CREATED + 5).outcome is Outcome.VERIFIED  # expires + 3
    late = check.verify(request(headers), CREATED + 5.001)
    assert (late.outcome, late.reason) == (Outcome.EXPIRED, "signature expired")
    assert check.verify(request(headers), CREATED + 4).nonce_expires_at == CREATED + 5


# --- failure modes --------------------------------------------------------------------------------

NOW = CREATED + 2


def outcome_of(headers: dict[str, list[str]], *, known: bool = True) -> tuple[Outcome, str]:
    check = verifier(integration()) if known else verifier()
    result = check.verify(request(headers), NOW)
    assert not result.accepted or result.outcome is Outcome.VERIFIED
    return result.outcome, result.reason


def with_fields(signature_input: str | None, signature: str | None) -> dict[str, list[str]]:
    headers = plain_headers()
    if signature_input is not None:
        headers["signature-input"] = [signature_input]
    if signature is not None:
        headers["signature"] = [signature]
    return headers


GOOD_INPUT = signed_headers()["signature-input"][0]
GOOD_SIGNATURE = signed_headers()["signature"][0]


@pytest.mark.parametrize(
    ("signature_input", "signature", "outcome"),
    [
        (GOOD_INPUT, None, Outcome.INVALID),  # only one field present
        (None, GOOD_SIGNATURE, Outcome.INVALID),
        ("sig1=(", GOOD_SIGNATURE, Outcome.INVALID),  # not a dictionary
        (GOOD_INPUT, "sig1=:not base64!:", Outcome.INVALID),
        ("", GOOD_SIGNATURE, Outcome.INVALID),  # empty dictionary
        (GOOD_INPUT + ", sig1=()", GOOD_SIGNATURE, Outcome.INVALID),  # duplicate label
        (GOOD_INPUT, GOOD_SIGNATURE + ", sig1=:AAAA:", Outcome.INVALID),
        (GOOD_INPUT, GOOD_SIGNATURE.replace("sig1", "sig2"), Outcome.INVALID),  # label missing
        (GOOD_INPUT, 'sig1="EySAbkK4NHku3eKUBlE+xEHSMJUauhk9nPhaYrgoOLE="', Outcome.INVALID),
        (GOOD_INPUT, GOOD_SIGNATURE + ";x=1", Outcome.INVALID),  # params on the signature
        ('sig1="@authority"', GOOD_SIGNATURE, Outcome.INVALID),  # not an inner list
        (GOOD_INPUT.replace('"@authority"', "authority"), GOOD_SIGNATURE, Outcome.INVALID),
        (GOOD_INPUT.replace('"@authority"', '"@authority";req'), GOOD_SIGNATURE,
         Outcome.UNSUPPORTED),
        (GOOD_INPUT.replace('"@authority"', '"@authority";zz'), GOOD_SIGNATURE, Outcome.INVALID),
        (GOOD_INPUT + ';tag="x"', GOOD_SIGNATURE, Outcome.INVALID),  # unknown parameter
        (GOOD_INPUT + ";keyid=1", GOOD_SIGNATURE, Outcome.INVALID),  # duplicate parameter
        (GOOD_INPUT.replace(f"created={CREATED}", f'created="{CREATED}"'), GOOD_SIGNATURE,
         Outcome.INVALID),
        (GOOD_INPUT.replace(f"created={CREATED}", "created=?1"), GOOD_SIGNATURE, Outcome.INVALID),
        (GOOD_INPUT.replace(f"created={CREATED}", "created=-1"), GOOD_SIGNATURE, Outcome.INVALID),
        (GOOD_INPUT.replace(f"created={CREATED}", f"created={CREATED}.0"), GOOD_SIGNATURE,
         Outcome.INVALID),
        (GOOD_INPUT.replace('nonce="', "nonce=x;z=\""), GOOD_SIGNATURE, Outcome.INVALID),
    ],
)  # fmt: skip
def test_malformed_fields(
    signature_input: str | None, signature: str | None, outcome: Outcome
) -> None:
    assert outcome_of(with_fields(signature_input, signature))[0] is outcome


def test_missing_api_key_is_a_precondition_failure() -> None:
    headers = signed_headers()
    del headers["x-api-key"]
    assert outcome_of(headers) == (Outcome.PRECONDITION, "X-API-KEY header missing")


@pytest.mark.parametrize(
    ("components", "outcome"),
    [
        (REQUIRED_COMPONENTS[:-1], Outcome.PRECONDITION),  # x-api-key not covered
        (REQUIRED_COMPONENTS[1:], Outcome.PRECONDITION),  # @request-target not covered
        ((*REQUIRED_COMPONENTS, "@authority"), Outcome.INVALID),  # duplicate
        ((*REQUIRED_COMPONENTS, "user-agent"), Outcome.PRECONDITION),  # covered header absent
        ((*REQUIRED_COMPONENTS, "@signature-params"), Outcome.INVALID),
        ((*REQUIRED_COMPONENTS, "@status"), Outcome.INVALID),
        ((*REQUIRED_COMPONENTS, "@query-params"), Outcome.UNSUPPORTED),
        ((*REQUIRED_COMPONENTS, "@scheme"), Outcome.UNSUPPORTED),
        ((*REQUIRED_COMPONENTS, "@nonsense"), Outcome.INVALID),
        ((*REQUIRED_COMPONENTS, "signature"), Outcome.UNSUPPORTED),
        ((*REQUIRED_COMPONENTS, "X-Extra"), Outcome.INVALID),  # not lower-case
        ((*REQUIRED_COMPONENTS, "@method"), Outcome.VERIFIED),  # extra, resolvable: fine
        (tuple(reversed(REQUIRED_COMPONENTS)), Outcome.VERIFIED),  # any order is fine
    ],
)
def test_component_rules(components: tuple[str, ...], outcome: Outcome) -> None:
    assert outcome_of(custom_signed_headers(components=components))[0] is outcome


def test_extra_header_component_that_is_present_verifies() -> None:
    headers = plain_headers()
    headers["user-agent"] = ["  genesys  "]
    signed = custom_signed_headers(
        components=(*REQUIRED_COMPONENTS, "user-agent"),
        values={"user-agent": "genesys"},
        headers=headers,
    )
    assert outcome_of(signed)[0] is Outcome.VERIFIED


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"created": None}, (Outcome.PRECONDITION, "created missing")),
        ({"created": NOW + 4, "expires": NOW + 30},
         (Outcome.PRECONDITION, "created in the future")),
        ({"created": CREATED - 20, "expires": CREATED + 30},
         (Outcome.EXPIRED, "signature too old")),
        ({"expires": CREATED - 5}, (Outcome.INVALID, "expires before created")),
        # expires has passed, but by less than the skew
        ({"expires": CREATED - 1, "created": CREATED - 2},
         (Outcome.VERIFIED, "signature verified")),
        ({"expires": CREATED - 2}, (Outcome.INVALID, "expires before created")),
        ({"nonce": None}, (Outcome.PRECONDITION, "nonce missing")),
        ({"nonce": "x" * 21}, (Outcome.PRECONDITION, "nonce too short")),
        ({"nonce": "x" * 22}, (Outcome.VERIFIED, "signature verified")),
        ({"nonce": "x" * 257}, (Outcome.INVALID, "nonce too long")),
        ({"keyid": "another-key"}, (Outcome.PRECONDITION, "keyid does not match X-API-KEY")),
        ({"keyid": None}, (Outcome.PRECONDITION, "keyid does not match X-API-KEY")),
        ({"alg": "hmac-sha512"}, (Outcome.UNSUPPORTED, "unsupported algorithm")),
        ({"alg": "rsa-pss-sha512"}, (Outcome.UNSUPPORTED, "unsupported algorithm")),
        ({"alg": None}, (Outcome.PRECONDITION, "alg missing")),
        ({"expires": None}, (Outcome.VERIFIED, "signature verified")),  # expires is optional
    ],
)  # fmt: skip
def test_parameter_rules(
    changes: dict[str, str | int | None], expected: tuple[Outcome, str]
) -> None:
    assert outcome_of(custom_signed_headers(params=default_params(**changes))) == expected


def test_wrong_secret_fails() -> None:
    headers = signed_headers(secret=OTHER_SECRET)
    assert outcome_of(headers) == (Outcome.FAILED, "signatures do not match")


def test_truncated_signature_fails() -> None:
    headers = signed_headers()
    headers["signature"] = ["sig1=:EySAbkK4NHku3eKUBlE+xEHSMJUauhk9nPhaYrgo:"]
    assert outcome_of(headers) == (Outcome.FAILED, "signatures do not match")


def test_unknown_key_fails_even_with_a_valid_looking_signature() -> None:
    assert outcome_of(signed_headers(), known=False) == (Outcome.FAILED, "unknown API key")


def test_disabled_integration_fails() -> None:
    check = verifier(integration(enabled=False))
    result = check.verify(request(signed_headers()), NOW)
    assert (result.outcome, result.reason) == (Outcome.FAILED, "integration disabled")
    assert result.integration is None


def test_non_ascii_component_value_is_invalid() -> None:
    headers = signed_headers()
    headers["audiohook-session-id"] = ["30b0e395-84d3-4570-ac13-9a62d8f514c\xe9"]
    assert outcome_of(headers)[0] is Outcome.INVALID


def test_reasons_never_carry_secret_or_signature() -> None:
    for headers in (signed_headers(), signed_headers(secret=OTHER_SECRET)):
        result = verifier(integration()).verify(request(headers), NOW)
        for secret_text in (SECRET, OTHER_SECRET, headers["signature"][0], NONCE, API_KEY):
            assert secret_text not in result.reason
            assert secret_text not in repr(result.integration)


# --- unsigned, rotation ---------------------------------------------------------------------------


def test_unsigned_accepted_only_for_an_integration_without_secret() -> None:
    open_one = integration(secrets=())
    accepted = verifier(open_one).verify(request(plain_headers()), NOW)
    assert (accepted.outcome, accepted.accepted, accepted.integration) == (
        Outcome.UNSIGNED,
        True,
        open_one,
    )
    assert accepted.nonce is None

    for check in (verifier(integration()), verifier(), verifier(integration((), enabled=False))):
        refused = check.verify(request(plain_headers()), NOW)
        assert (refused.outcome, refused.accepted, refused.integration) == (
            Outcome.UNSIGNED,
            False,
            None,
        )


def test_signed_request_for_an_integration_without_secret_fails() -> None:
    result = verifier(integration(secrets=())).verify(request(signed_headers()), NOW)
    assert result.outcome is Outcome.FAILED
    assert not result.accepted


def test_rotation_any_configured_secret_verifies() -> None:
    rotating = verifier(integration(secrets=(SECRET, OTHER_SECRET)))
    for secret in (SECRET, OTHER_SECRET):
        result = rotating.verify(request(signed_headers(secret=secret)), NOW)
        assert result.outcome is Outcome.VERIFIED
    third = base64.b64encode(b"a third secret nobody configured").decode()
    assert rotating.verify(request(signed_headers(secret=third)), NOW).outcome is Outcome.FAILED
    # after the overlap only the new secret works
    rotated = verifier(integration(secrets=(OTHER_SECRET,)))
    assert rotated.verify(request(signed_headers(secret=SECRET)), NOW).outcome is Outcome.FAILED
    assert rotated.verify(request(signed_headers(secret=OTHER_SECRET)), NOW).accepted


# --- request components ---------------------------------------------------------------------------


def test_obs_fold_unfolding_is_linear_in_a_long_run_of_blanks() -> None:
    # A regular expression with a leading `[ \t]*` took quadratic time here: 0.13 s for 8 KB
    # of spaces, minutes for this (the test's timeout fails it); unfolding must take one pass.
    blanks = " " * 400_000
    assert unfold_obs_fold(f"a{blanks}x\r\n y") == f"a{blanks}x y"
    assert canonicalize_field_value([f"a{blanks}b"]) == f"a{blanks}b"


def test_header_canonicalisation() -> None:
    assert canonicalize_field_value(["  a \t"]) == "a"
    assert canonicalize_field_value(["a,\r\n  b", " c "]) == "a, b, c"
    headers = custom_signed_headers(
        components=(*REQUIRED_COMPONENTS, "x-multi"),
        values={"x-multi": "one, two"},
        headers=plain_headers() | {"x-multi": [" one", "two "]},
    )
    assert outcome_of(headers)[0] is Outcome.VERIFIED


def test_request_parts() -> None:
    assert request_target(b"/api/v1/audiohook/ws", b"") == "/api/v1/audiohook/ws"
    assert request_target(b"/ws", b"a=1&b=%20") == "/ws?a=1&b=%20"
    assert canonical_authority(" AudioHook.Example.COM:8443 ") == "audiohook.example.com:8443"
    assert canonical_authority(None) is None
    assert canonical_authority("") is None
    pairs: list[tuple[str | bytes, str | bytes]] = [
        (b"X-API-KEY", b"k"),
        (b"x-api-key", b"k2"),
        ("Host", "h"),
    ]
    assert collect_headers(pairs) == {"x-api-key": ["k", "k2"], "host": ["h"]}


def test_missing_authority_is_a_precondition_failure() -> None:
    result = verifier(integration()).verify(request(signed_headers(), authority=None), NOW)
    assert result.outcome is Outcome.PRECONDITION


def test_derived_path_query_and_method_components() -> None:
    components = (*REQUIRED_COMPONENTS, "@path", "@query", "@method")
    values = {"@request-target": "/ws?a=1", "@path": "/ws", "@query": "?a=1", "@method": "GET"}
    headers = custom_signed_headers(components=components, values=values)
    result = verifier(integration()).verify(request(headers, target="/ws?a=1"), NOW)
    assert result.outcome is Outcome.VERIFIED
    other_method = SignedRequest("/ws?a=1", AUTHORITY, headers, method="POST")
    assert verifier(integration()).verify(other_method, NOW).outcome is Outcome.FAILED


def test_params_serialisation_matches_the_structured_field_library() -> None:
    params: list[SignatureParam] = [
        ("keyid", 'a"b\\c'),
        ("created", 0),
        ("expires", 999_999_999_999_999),
    ]
    ours = signature_params_value(["@authority", "x-api-key"], params)
    structure: Any = {"sig1": ([("@authority", {}), ("x-api-key", {})], dict(params))}
    assert f"sig1={ours}" == http_sf.ser(structure)
    with pytest.raises(ValueError, match="printable ASCII"):
        signature_params_value(["caf\xe9"], params)
    with pytest.raises(ValueError, match="out of range"):
        signature_params_value(["x"], [("created", 10**15)])


def test_sign_request_defaults_are_fresh_and_verifiable() -> None:
    import time

    first = sign_request(
        api_key=API_KEY,
        client_secret_b64=SECRET,
        request_target=TARGET,
        authority=AUTHORITY,
        organization_id=ORG,
        session_id=SESSION,
        correlation_id=CORRELATION,
    )
    parsed: Any = http_sf.parse(first["Signature-Input"].encode(), tltype="dictionary")
    params = parsed["sig1"][1]
    assert len(params["nonce"]) == 24
    assert params["expires"] - params["created"] == 30
    headers = plain_headers() | {
        "signature-input": [first["Signature-Input"]],
        "signature": [first["Signature"]],
    }
    assert verifier(integration()).verify(request(headers), time.time()).accepted
    with pytest.raises(ValueError, match="label"):
        sign_request(
            api_key=API_KEY,
            client_secret_b64=SECRET,
            request_target=TARGET,
            authority=AUTHORITY,
            organization_id=ORG,
            session_id=SESSION,
            correlation_id=CORRELATION,
            label="Sig1",
        )
