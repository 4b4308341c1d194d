"""The signature fields' fast path against the generic structured-field parser: wherever the
fast path gives an answer, it is the generic parser's; everything else it leaves alone."""

from __future__ import annotations

import base64
import random
import re
from typing import Any

import http_sf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.security.signature_fields import canonical_dictionary
from tests.unit.security.vectors import API_KEY, CREATED, NONCE, signed_headers

GENESYS_INPUT = signed_headers()["signature-input"][0]
GENESYS_SIGNATURE = signed_headers()["signature"][0]


def _refuse_duplicate(key: str, context: str) -> None:
    raise http_sf.StructuredFieldError(f"duplicate key in {context}")


def generic(text: str) -> Any:
    """What app/security/signature.py's generic path gets from http_sf, or None if refused."""
    try:
        return http_sf.parse(
            text.encode("latin-1"), tltype="dictionary", on_duplicate_key=_refuse_duplicate
        )
    except (http_sf.StructuredFieldError, ValueError, UnicodeError):
        return None


def typed(value: Any) -> Any:
    """`value` in a form whose `==` also compares types and dictionary key order. Plain `==`
    finds `True == 1`, a token equal to its text and two dicts in different orders equal,
    where the verifier tells them apart (it checks types with `is` and signs the parameters
    in their order)."""
    if isinstance(value, dict):
        return ("dict", [(key, typed(item)) for key, item in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__name__, [typed(item) for item in value])
    return (type(value).__name__, value)


def same_as_generic(text: str, fast: Any) -> bool:
    return typed(fast) == typed(generic(text))


def test_genesys_fields_take_the_fast_path_with_the_generic_result() -> None:
    parsed_input = canonical_dictionary(GENESYS_INPUT)
    assert parsed_input is not None
    assert same_as_generic(GENESYS_INPUT, parsed_input)
    components, params = parsed_input["sig1"]
    assert [name for name, _ in components][:2] == ["@request-target", "@authority"]
    assert params["keyid"] == API_KEY
    assert params["nonce"] == NONCE
    assert params["created"] == CREATED
    assert isinstance(params["created"], int)
    parsed_signature = canonical_dictionary(GENESYS_SIGNATURE)
    assert parsed_signature is not None
    assert same_as_generic(GENESYS_SIGNATURE, parsed_signature)
    assert len(parsed_signature["sig1"][0]) == 32  # an HMAC-SHA256


@pytest.mark.parametrize(
    "text",
    [
        'sig1=("a");keyid="k", sig2=("b")',  # two members
        'sig1=( "a" "b");keyid="k"',  # whitespace a serializer does not write
        'sig1=("a"  "b")',
        'sig1=("a") ;keyid="k"',
        'sig1=("a\\"b");keyid="k"',  # an escape
        'sig1=("a");created=007',  # leading zeros
        'sig1=("a");created=-1',
        'sig1=("a");created=-0',
        'sig1=("a");created=1234567890123456',  # 16 digits: out of range
        'sig1=("\x7f")',  # not printable ASCII
        'sig1=("\x80")',
        'sig1=("\xe9")',
        'sig1=("a\x00")',
        'sig1=("a");created=1;created=2',  # duplicate parameter (the generic parser refuses)
        'sig1=("a");alg=hmac',  # a token
        'sig1=("a");flag',  # a boolean
        'sig1=("a");created=1.5',  # a decimal
        'sig1=("a";req)',  # a parameter on a component
        "sig1=(a)",  # a token component
        "sig1=()",  # no components
        "sig1=:QQ:",  # unpadded base64
        "sig1=:QQ==:;x=1",  # parameters on the byte sequence
        "Sig1=:QQ==:",
        "",
    ],
)
def test_other_forms_go_to_the_generic_parser(text: str) -> None:
    assert canonical_dictionary(text) is None


# Characters that matter to the grammar, and a few that do not.
_ALPHABET = ' \t"\\;=,():?*-_.+/0179AZaz@~\x00\x1f\x7f\x80\xe9\xff\u0100'


def _mutations(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        text = list(rng.choice((GENESYS_INPUT, GENESYS_SIGNATURE, 'sig1=("a" "b");n=0')))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text) + 1)
            action = rng.randrange(3)
            if action == 0 and at < len(text):
                del text[at]
            elif action == 1 and at < len(text):
                text[at] = rng.choice(_ALPHABET)
            else:
                text.insert(at, rng.choice(_ALPHABET))
        found.append("".join(text))
    return found


def test_mutated_fields_get_the_generic_answer_or_none() -> None:
    fast_answers = generic_only = 0
    for text in _mutations(seed=9421, count=6000):
        fast = canonical_dictionary(text)
        if fast is None:
            generic_only += generic(text) is not None
            continue
        assert same_as_generic(text, fast), text
        fast_answers += 1
    # Both kinds occur, so the comparison above was made often and the fallback was taken.
    assert fast_answers > 1000
    assert generic_only > 400


# Mostly what a serializer writes, and now and then what it does not (other characters, escapes,
# signs, leading zeros, 16 digits): the fast path must then decline or agree.
_sf_string = st.text(
    st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
        st.sampled_from(["\x00", "\x1f", "\x7f", "\x80", "\xff", "\\", '"']),
    ),
    max_size=12,
)
_key = st.from_regex(r"[a-zA-Z*][a-z0-9_\-.*]{0,6}", fullmatch=True)
_integer = st.one_of(
    st.integers(0, 10**15 - 1).map(str),
    st.integers(-(10**16), 10**16).map(str),
    st.integers(0, 999).map(lambda number: f"0{number}"),
)
_param_value = st.one_of(_sf_string.map(lambda text: f'"{text}"'), _integer)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    label=_key,
    items=st.lists(_sf_string, min_size=1, max_size=6),
    params=st.lists(st.tuples(_key, _param_value), max_size=6),
)
def test_serialized_inner_lists_parse_as_the_generic_parser_does(
    label: str, items: list[str], params: list[tuple[str, str]]
) -> None:
    text = f"{label}=(" + " ".join(f'"{item}"' for item in items) + ")"
    text += "".join(f";{key}={value}" for key, value in params)
    fast = canonical_dictionary(text)
    if len({key for key, _ in params}) < len(params):
        assert fast is None  # a duplicate parameter: refused by the generic parser
    elif fast is not None:
        assert same_as_generic(text, fast), text
    serialized = all(
        re.fullmatch(r"[a-z*][a-z0-9_\-.*]*", key) for key in [label, *(key for key, _ in params)]
    ) and all(
        re.fullmatch(r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"|0|[1-9][0-9]{0,14}', value)
        for value in [*(f'"{item}"' for item in items), *(value for _, value in params)]
    )
    if serialized and len({key for key, _ in params}) == len(params):
        assert fast is not None, text  # what a serializer writes takes the fast path


@settings(max_examples=200, deadline=None)
@given(label=_key, value=st.binary(max_size=48))
def test_serialized_byte_sequences_parse_as_the_generic_parser_does(
    label: str, value: bytes
) -> None:
    text = f"{label}=:{base64.b64encode(value).decode()}:"
    fast = canonical_dictionary(text)
    if label[0].isupper():
        assert fast is None
        return
    assert fast is not None
    assert same_as_generic(text, fast)
    assert typed(fast) == typed({label: (value, {})})
