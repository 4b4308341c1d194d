"""Hostile Signature / Signature-Input fields are refused by size and shape before the
structured-field parser or any HMAC sees them, so their cost per upgrade stays bounded."""

from __future__ import annotations

import http_sf
import pytest

from app.security.signature import (
    MAX_COVERED_COMPONENTS,
    MAX_SIGNATURE_FIELD_BYTES,
    MAX_SIGNATURE_MEMBERS,
    REQUIRED_COMPONENTS,
    Outcome,
)
from tests.unit.security.vectors import (
    CREATED,
    custom_signed_headers,
    integration,
    plain_headers,
    request,
    signed_headers,
    verifier,
)

NOW = float(CREATED + 1)
GOOD = signed_headers()
GOOD_INPUT, GOOD_SIGNATURE = GOOD["signature-input"][0], GOOD["signature"][0]
JUNK_MEMBER = f'j{{}}=("@request-target" "@authority" "x-api-key");created={CREATED};keyid="k"'


def junk_members(size: int) -> str:
    """Dictionary members of plausible shape, `size` bytes in all (the red-team header)."""
    members: list[str] = []
    while len(", ".join(members)) < size:
        members.append(JUNK_MEMBER.format(len(members)))
    return ", ".join(members)[:size].rsplit(",", 1)[0]


def verify(signature_input: list[str], signature: list[str]) -> tuple[Outcome, str]:
    headers = plain_headers()
    headers["signature-input"] = signature_input
    headers["signature"] = signature
    result = verifier(integration()).verify(request(headers), NOW)
    return result.outcome, result.reason


@pytest.fixture
def parsed_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every input the generic structured-field parser is handed. (The fast path
    for the form Genesys sends, app/security/signature_fields.py, runs at the same point, on
    the same bounded fields.)"""
    sizes: list[int] = []
    real_parse = http_sf.parse

    def recording_parse(data: bytes, **options: object) -> object:
        sizes.append(len(data))
        return real_parse(data, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(http_sf, "parse", recording_parse)
    return sizes


def test_a_genesys_sized_signature_is_far_below_the_caps(parsed_sizes: list[int]) -> None:
    assert len(GOOD_INPUT) < MAX_SIGNATURE_FIELD_BYTES / 4
    assert verify([GOOD_INPUT], [GOOD_SIGNATURE])[0] is Outcome.VERIFIED
    assert parsed_sizes == []  # both took the fast path: the generic parser was not needed


def test_a_field_off_the_fast_path_goes_to_the_generic_parser(parsed_sizes: list[int]) -> None:
    spaced = GOOD_INPUT.replace('" "', '"  "', 1)  # optional whitespace: valid, not canonical
    assert verify([spaced], [GOOD_SIGNATURE])[0] is Outcome.VERIFIED
    assert parsed_sizes == [len(spaced)]


HOSTILE_INPUTS = {
    # The red-team header: 7.8 KB of junk members.
    "junk members": ([junk_members(7800)], "signature field too large"),
    # A good member first, then junk: the size counts, not where the good part is.
    "good then junk": ([GOOD_INPUT + ", " + junk_members(7800)], "signature field too large"),
    # Many field lines, each small: their joined size counts.
    "many lines": ([GOOD_INPUT] * 10, "signature field too large"),
    # Under the byte cap but more members than allowed.
    "members": (
        [", ".join(f"m{i}=()" for i in range(MAX_SIGNATURE_MEMBERS + 1))],
        "too many signature members",
    ),
    # Under the byte cap but more quoted strings than components allowed.
    "strings": (
        [
            "sig1=("
            + " ".join(['"x"'] * (MAX_SIGNATURE_MEMBERS * (MAX_COVERED_COMPONENTS + 3) + 1))
            + ")"
        ],
        "too many covered components",
    ),
    # Under the byte cap but hundreds of tokens or parameters.
    "tokens": (["sig1=(" + " ".join(["t"] * 300) + ")"], "too many signature items"),
    "parameters": (
        ["sig1=();" + ";".join(f"p{i}=1" for i in range(300))],
        "too many signature items",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_INPUTS))
def test_hostile_signature_input_is_refused_before_parsing(
    case: str, parsed_sizes: list[int]
) -> None:
    values, reason = HOSTILE_INPUTS[case]
    assert verify(values, [GOOD_SIGNATURE]) == (Outcome.INVALID, reason)
    assert parsed_sizes == []  # neither field was parsed


def test_an_oversized_signature_field_is_refused_before_parsing(parsed_sizes: list[int]) -> None:
    huge = GOOD_SIGNATURE + ", " + ", ".join(f"x{i}=:AAAA:" for i in range(400))
    assert verify([GOOD_INPUT], [huge]) == (Outcome.INVALID, "signature field too large")
    assert parsed_sizes == []


def test_the_byte_cap_is_inclusive() -> None:
    # Two field lines: the good member, then an unused member padded to reach the cap.
    def lines(padding: int) -> list[str]:
        return [GOOD_SIGNATURE, "z=:" + "A" * padding + ":"]

    def size(values: list[str]) -> int:  # joined with ", "
        return sum(len(v) for v in values) + 2 * (len(values) - 1)

    padding = (MAX_SIGNATURE_FIELD_BYTES - size(lines(0))) // 4 * 4  # whole base64 quads
    assert MAX_SIGNATURE_FIELD_BYTES - 4 < size(lines(padding)) <= MAX_SIGNATURE_FIELD_BYTES
    assert verify([GOOD_INPUT], lines(padding))[0] is Outcome.VERIFIED
    over = lines(padding + 4)
    assert verify([GOOD_INPUT], over) == (Outcome.INVALID, "signature field too large")


def test_several_members_up_to_the_cap_still_verify_the_first() -> None:
    extra = [f"m{i}=()" for i in range(MAX_SIGNATURE_MEMBERS - 1)]
    signature_input = ", ".join([GOOD_INPUT, *extra])
    assert verify([signature_input], [GOOD_SIGNATURE])[0] is Outcome.VERIFIED


def covered(count: int) -> tuple[str, ...]:
    extra_headers = [f"x-extra-{i}" for i in range(count)]
    derived = ("@method", "@path", "@query")
    return (*REQUIRED_COMPONENTS, *derived, *extra_headers)[:count]


def signed_with_components(count: int) -> dict[str, list[str]]:
    components = covered(count)
    headers = plain_headers() | {name: ["v"] for name in components if name.startswith("x-extra")}
    values = {"@path": "/api/v1/audiohook/ws", "@query": "?"}
    values |= {name: "v" for name in components if name.startswith("x-extra")}
    return custom_signed_headers(components=components, values=values, headers=headers)


def test_the_component_cap_is_inclusive() -> None:
    check = verifier(integration())
    at_cap = check.verify(request(signed_with_components(MAX_COVERED_COMPONENTS)), NOW)
    assert at_cap.outcome is Outcome.VERIFIED, at_cap.reason
    over = check.verify(request(signed_with_components(MAX_COVERED_COMPONENTS + 1)), NOW)
    assert (over.outcome, over.reason) == (Outcome.INVALID, "too many covered components")
