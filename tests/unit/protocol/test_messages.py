"""Message parsing, validation and serialisation (docs/protocol.md §3)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.protocol.messages import (
    MAX_TEXT_CHARS,
    NULL_UUID,
    CloseParameters,
    DiscardedParameters,
    ErrorParameters,
    OpenParameters,
    PausedParameters,
    PingParameters,
    ProtocolError,
    ResumedParameters,
    UpdateParameters,
    disconnect_parameters,
    encode_client_message,
    encode_server_message,
    event_parameters,
    format_duration,
    format_seconds,
    is_language,
    is_uuid,
    opened_parameters,
    parse_client_message,
    parse_duration,
    parse_envelope,
    parse_parameters,
    reconnect_parameters,
)
from tests.unit.protocol.helpers import (
    MONO_EXTERNAL,
    ORG_ID,
    SESSION_ID,
    STEREO,
    open_parameters,
    probe_open_parameters,
)


def envelope(**overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "version": "2",
        "type": "ping",
        "id": SESSION_ID,
        "seq": 1,
        "serverseq": 0,
        "position": "PT0S",
        "parameters": {},
    }
    message.update(overrides)
    return message


def dumps(message: object) -> str:
    return json.dumps(message, separators=(",", ":"))  # std json: also writes huge integers


# --- Duration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "samples"),
    [
        ("PT0S", 0),
        ("PT0.2S", 1600),
        ("PT.5S", 4000),
        ("PT1S", 8000),
        ("PT12.345S", 98760),
        ("PT6.3S", 50400),
        ("PT0.000125S", 1),
        ("PT0.0000625S", 1),  # exactly half a sample rounds up
        ("PT0.00006S", 0),  # 0.48 samples
        ("PT000010S", 80000),
        ("PT86400S", 691_200_000),
        ("PT0.1000000000000000000000001S", 800),  # exact decimal, no float drift
    ],
)
def test_parse_duration_valid(text: str, samples: int) -> None:
    assert parse_duration(text) == samples


@pytest.mark.parametrize(
    "text",
    [
        "",
        "PT",
        "PTS",
        "PT1",
        "P1S",
        "PT1.S",
        "PT.S",
        "PT1M",
        "PT1H",
        "PT-1S",
        "PT+1S",
        "PT1e3S",
        "PT1.2.3S",
        "PT 1S",
        "PT1S ",
        "pt1s",
        "PT\u0661S",  # Arabic-Indic digit one: not an ASCII digit
        "PT\u00b2S",  # superscript two
        "PT" + "9" * 60 + "S",  # absurdly long: rejected without big-int work
    ],
)
def test_parse_duration_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("samples", "text"),
    [
        (0, "PT0S"),
        (1, "PT0.000125S"),
        (800, "PT0.1S"),
        (4000, "PT0.5S"),
        (8000, "PT1S"),
        (98760, "PT12.345S"),
        (80_000, "PT10S"),
    ],
)
def test_format_duration_is_shortest_decimal(samples: int, text: str) -> None:
    assert format_duration(samples) == text


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=10**12))
def test_duration_round_trip(samples: int) -> None:
    assert parse_duration(format_duration(samples)) == samples


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (Decimal("12.3450"), "PT12.345S"),
        (Decimal("1E+1"), "PT10S"),
        (Decimal("0.000"), "PT0S"),
        (0.2, "PT0.2S"),
        (1.1, "PT1.1S"),
        (10, "PT10S"),
        (0, "PT0S"),
    ],
)
def test_format_seconds(seconds: Decimal | int | float, text: str) -> None:
    assert format_seconds(seconds) == text


@pytest.mark.parametrize("seconds", [-1, -0.5, float("nan"), float("inf"), Decimal("NaN")])
def test_format_seconds_rejects_invalid(seconds: Decimal | int | float) -> None:
    with pytest.raises(ValueError):
        format_seconds(seconds)


# --- UUID and language -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        SESSION_ID,
        SESSION_ID.upper(),
        NULL_UUID,
        "123e4567-e89b-12d3-a456-426614174000",  # v1
        "123e4567-e89b-52d3-b456-426614174000",  # v5, variant b
    ],
)
def test_uuid_valid(value: str) -> None:
    assert is_uuid(value)


@pytest.mark.parametrize(
    "value",
    [
        "123e4567-e89b-62d3-a456-426614174000",  # v6 (rejected by the protocol's pattern)
        "123e4567-e89b-02d3-a456-426614174000",  # v0
        "123e4567-e89b-42d3-c456-426614174000",  # variant c
        "123e4567e89b42d3a456426614174000",  # no dashes
        SESSION_ID + "\n",
        " " + SESSION_ID,
        "{" + SESSION_ID + "}",
        "g23e4567-e89b-42d3-a456-426614174000",
        "",
        None,
        42,
    ],
)
def test_uuid_invalid(value: object) -> None:
    assert not is_uuid(value)


@pytest.mark.parametrize("value", ["en-US", "de-de", "fil-PH", "yue-HKG", "pt-br"])
def test_language_valid(value: str) -> None:
    assert is_language(value)


@pytest.mark.parametrize(
    "value",
    [
        "en",
        "EN-US",
        "en_US",
        "en-USAA",
        "e-US",
        "enus-US",
        "en-U",
        "en-US\n",
        "es-419",
        "",
        None,
        1,
    ],
)
def test_language_invalid(value: object) -> None:
    assert not is_language(value)


# --- envelope ---------------------------------------------------------------------------


def test_envelope_valid() -> None:
    parsed = parse_envelope(dumps(envelope(seq=7, serverseq=3, position="PT1.5S", extra=1)))
    assert (parsed.id, parsed.type, parsed.seq, parsed.serverseq) == (SESSION_ID, "ping", 7, 3)
    assert parsed.position == 12000
    assert parsed.parameters == {}


def test_envelope_too_large() -> None:
    text = dumps(envelope(parameters={"pad": "x" * MAX_TEXT_CHARS}))
    with pytest.raises(ProtocolError) as excinfo:
        parse_envelope(text)
    assert excinfo.value.kind == "too_large"
    assert excinfo.value.info.startswith("Client Error:")


def test_envelope_at_size_limit_is_accepted() -> None:
    base = dumps(envelope(parameters={"pad": ""}))
    text = dumps(envelope(parameters={"pad": "x" * (MAX_TEXT_CHARS - len(base))}))
    assert len(text) == MAX_TEXT_CHARS
    assert parse_envelope(text).type == "ping"


@pytest.mark.parametrize("text", ["", "{", "not json", "{'a': 1}", "NaN", "[1,]", '"\ud800"'])
def test_envelope_invalid_json(text: str) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        parse_envelope(text)
    assert excinfo.value.kind == "invalid_json"
    assert excinfo.value.info == "Client Error: Message is not valid JSON"


@pytest.mark.parametrize(
    "message",
    [
        [],
        "ping",
        1,
        None,
        envelope(version=2),
        envelope(version="1"),
        envelope(id="not-a-uuid"),
        envelope(id=None),
        envelope(type=1),
        envelope(seq=True),
        envelope(seq=-1),
        envelope(seq=1.0),
        envelope(seq="1"),
        envelope(serverseq=False),
        envelope(serverseq=-2),
        envelope(position="1s"),
        envelope(position=0),
        envelope(parameters=[]),
        envelope(parameters=None),
        {k: v for k, v in envelope().items() if k != "parameters"},
        {k: v for k, v in envelope().items() if k != "position"},
        {k: v for k, v in envelope().items() if k != "serverseq"},
        {k: v for k, v in envelope().items() if k != "version"},
        envelope(seq=10**30),  # parsed as a float by the JSON decoder
    ],
)
def test_envelope_malformed(message: object) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        parse_envelope(dumps(message))
    assert excinfo.value.kind == "malformed_message"
    assert excinfo.value.info == "Client Error: Not a well-formed client message"


def test_unknown_type() -> None:
    with pytest.raises(ProtocolError) as excinfo:
        parse_parameters("opened", {})
    assert excinfo.value.kind == "unknown_type"
    assert excinfo.value.info == "Client Error: 'opened' is not a supported client message"


def test_unknown_type_label_is_not_echoed_when_long() -> None:
    with pytest.raises(ProtocolError) as excinfo:
        parse_parameters("x" * 1000, {})
    assert "xxx" not in excinfo.value.info
    assert len(excinfo.value.info) < 100


# --- parameters per message type --------------------------------------------------------


def test_open_parameters_valid() -> None:
    parsed = parse_parameters("open", open_parameters(supportedLanguages=True, extra="ok"))
    assert isinstance(parsed, OpenParameters)
    assert parsed.organization_id == ORG_ID
    assert parsed.language == "en-US"
    assert parsed.supported_languages is True
    assert parsed.continued_sessions == []
    assert parsed.custom_config is None
    assert parsed.media[0] == STEREO


def test_open_probe_parameters_with_nulls_are_valid() -> None:
    parsed = parse_parameters("open", probe_open_parameters())
    assert isinstance(parsed, OpenParameters)
    assert parsed.language is None
    assert parsed.conversation_id == NULL_UUID
    assert parsed.custom_config == {}


def test_open_null_optional_fields_are_absent() -> None:
    parsed = parse_parameters(
        "open",
        open_parameters(
            language=None, supportedLanguages=None, continuedSessions=None, customConfig=None
        ),
    )
    assert isinstance(parsed, OpenParameters)
    assert parsed.language is None
    assert parsed.supported_languages is False
    assert parsed.continued_sessions == []
    assert parsed.custom_config is None


def test_open_optional_fields_present() -> None:
    continued = [{"id": SESSION_ID, "serverseq": 4, "clientseq": 9}]
    parsed = parse_parameters(
        "open",
        open_parameters(continuedSessions=continued, customConfig={"k": [1, 2]}, media=[]),
    )
    assert isinstance(parsed, OpenParameters)
    assert parsed.continued_sessions == continued
    assert parsed.custom_config == {"k": [1, 2]}
    assert parsed.media == []


def test_open_null_caller_id_fields_read_as_empty() -> None:
    participant = {"id": NULL_UUID, "ani": None, "aniName": "", "dnis": None}
    parsed = parse_parameters("open", open_parameters(participant=participant))
    assert isinstance(parsed, OpenParameters)
    assert parsed.participant == {"id": NULL_UUID, "ani": "", "aniName": "", "dnis": ""}


def _without(parameters: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in parameters.items() if k != key}


BAD_OPEN = [
    _without(open_parameters(), "organizationId"),
    open_parameters(organizationId="nope"),
    open_parameters(conversationId=None),
    _without(open_parameters(), "participant"),
    open_parameters(participant=None),
    open_parameters(participant={"id": "x", "ani": "", "aniName": "", "dnis": ""}),
    open_parameters(participant={"id": NULL_UUID, "ani": 1, "aniName": "", "dnis": ""}),
    _without(open_parameters(), "media"),
    open_parameters(media=None),
    open_parameters(media={"type": "audio"}),
    open_parameters(media=["PCMU"]),
    open_parameters(media=[{**STEREO, "channels": []}]),
    open_parameters(media=[{**STEREO, "channels": ["external", "internal", "external"]}]),
    open_parameters(media=[{**STEREO, "channels": [1]}]),
    open_parameters(media=[{**STEREO, "rate": "8000"}]),
    open_parameters(media=[{**STEREO, "rate": True}]),
    open_parameters(media=[_without(STEREO, "format")]),
    open_parameters(language="en"),
    open_parameters(language=5),
    open_parameters(supportedLanguages="yes"),
    open_parameters(continuedSessions={}),
    open_parameters(continuedSessions=[{"id": SESSION_ID, "serverseq": -1, "clientseq": 0}]),
    open_parameters(continuedSessions=[{"id": "x", "serverseq": 1, "clientseq": 0}]),
    open_parameters(customConfig=[]),
]


@pytest.mark.parametrize("parameters", BAD_OPEN)
def test_open_parameters_invalid(parameters: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        parse_parameters("open", parameters)
    assert excinfo.value.kind == "bad_parameters"
    assert excinfo.value.info.startswith("Client Error: Invalid open parameter")


def test_open_tolerates_unknown_media_formats() -> None:
    """An offer the server cannot use is not a protocol error; the media policy skips it."""
    future = {"type": "audio", "format": "OPUS", "channels": ["external"], "rate": 16000}
    parsed = parse_parameters("open", open_parameters(media=[future, MONO_EXTERNAL]))
    assert isinstance(parsed, OpenParameters)
    assert parsed.media == [future, MONO_EXTERNAL]


VALID_PARAMETERS: list[tuple[str, dict[str, Any], object]] = [
    ("close", {"reason": "end"}, CloseParameters("end")),
    ("close", {"reason": "error"}, CloseParameters("error")),
    ("close", {"reason": "disconnect"}, CloseParameters("disconnect")),
    ("close", {"reason": "reconnect", "extra": 1}, CloseParameters("reconnect")),
    ("ping", {}, PingParameters(None)),
    ("ping", {"rtt": None}, PingParameters(None)),
    ("ping", {"rtt": "PT0.25S"}, PingParameters(2000)),
    ("paused", {}, PausedParameters()),
    ("paused", {"whatever": True}, PausedParameters()),
    ("resumed", {"start": "PT6.1S", "discarded": "PT10S"}, ResumedParameters(48800, 80000)),
    ("discarded", {"start": "PT6.3S", "discarded": "PT0.3S"}, DiscardedParameters(50400, 2400)),
    ("update", {"language": "de-DE"}, UpdateParameters("de-DE")),
    ("error", {"code": 400, "message": "tough stuff"}, ErrorParameters(400, "tough stuff", None)),
    ("error", {"code": 9999, "message": "", "retryAfter": None}, ErrorParameters(9999, "", None)),
    (
        "error",
        {"code": 429, "message": "slow down", "retryAfter": "PT2.5S"},
        ErrorParameters(429, "slow down", 20000),
    ),
]


@pytest.mark.parametrize(("msg_type", "parameters", "expected"), VALID_PARAMETERS)
def test_parameters_valid(msg_type: str, parameters: dict[str, Any], expected: object) -> None:
    assert parse_parameters(msg_type, parameters) == expected


INVALID_PARAMETERS: list[tuple[str, dict[str, Any]]] = [
    ("close", {}),
    ("close", {"reason": "bye"}),
    ("close", {"reason": None}),
    ("ping", {"rtt": 0.25}),
    ("ping", {"rtt": "0.25"}),
    ("resumed", {"start": "PT1S"}),
    ("resumed", {"discarded": "PT1S"}),
    ("resumed", {"start": None, "discarded": "PT1S"}),
    ("resumed", {"start": "PT1S", "discarded": "PT1M"}),
    ("discarded", {}),
    ("discarded", {"start": "PT1S", "discarded": 3}),
    ("update", {}),
    ("update", {"language": "english"}),
    ("update", {"language": None}),
    ("error", {"message": "x"}),
    ("error", {"code": 399, "message": "x"}),
    ("error", {"code": 10000, "message": "x"}),
    ("error", {"code": True, "message": "x"}),
    ("error", {"code": 400.0, "message": "x"}),
    ("error", {"code": 400}),
    ("error", {"code": 400, "message": 1}),
    ("error", {"code": 429, "message": "x", "retryAfter": "2s"}),
]


@pytest.mark.parametrize(("msg_type", "parameters"), INVALID_PARAMETERS)
def test_parameters_invalid(msg_type: str, parameters: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        parse_parameters(msg_type, parameters)
    assert excinfo.value.kind == "bad_parameters"
    assert excinfo.value.info.startswith(f"Client Error: Invalid {msg_type} parameter")


def test_parse_client_message_round_trip() -> None:
    text = encode_client_message("update", SESSION_ID, 3, 2, 8000, {"language": "fr-FR"})
    message = parse_client_message(text)
    assert message.envelope.seq == 3
    assert message.envelope.serverseq == 2
    assert message.envelope.position == 8000
    assert message.parameters == UpdateParameters("fr-FR")
    assert orjson.loads(text)["position"] == "PT1S"


# --- server messages --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg_type", "parameters"),
    [
        ("opened", opened_parameters(STEREO, False)),
        ("closed", {}),
        ("pong", {}),
        ("pause", {}),
        ("resume", {}),
        ("updated", {}),
        ("disconnect", disconnect_parameters("completed", None)),
        ("reconnect", reconnect_parameters("drain")),
        ("event", event_parameters([{"type": "transcript", "data": {"id": SESSION_ID}}])),
    ],
)
def test_encode_server_message(msg_type: Any, parameters: dict[str, Any]) -> None:
    text = encode_server_message(msg_type, SESSION_ID, 5, 4, parameters)
    message = orjson.loads(text)
    assert list(message) == ["version", "type", "id", "seq", "clientseq", "parameters"]
    assert message == {
        "version": "2",
        "type": msg_type,
        "id": SESSION_ID,
        "seq": 5,
        "clientseq": 4,
        "parameters": parameters,
    }


def test_encode_server_message_rejects_unserialisable() -> None:
    with pytest.raises(ValueError):
        encode_server_message("event", SESSION_ID, 1, 1, {"entities": [{"data": object()}]})


def test_opened_parameters() -> None:
    assert opened_parameters(None, False) == {"media": [], "startPaused": False}
    assert opened_parameters(MONO_EXTERNAL, True, ["en-US"], discard_to_samples=8000) == {
        "media": [MONO_EXTERNAL],
        "startPaused": True,
        "discardTo": "PT1S",
        "supportedLanguages": ["en-US"],
    }
    assert opened_parameters(None, False, [])["supportedLanguages"] == []


def test_disconnect_and_reconnect_parameters() -> None:
    assert disconnect_parameters("error", "Client Error: Invalid seq") == {
        "reason": "error",
        "info": "Client Error: Invalid seq",
    }
    assert disconnect_parameters("unauthorized", None) == {"reason": "unauthorized"}
    with pytest.raises(ValueError):
        disconnect_parameters("bye", None)  # type: ignore[arg-type]
    assert reconnect_parameters(None) == {}
    assert reconnect_parameters("moving") == {"info": "moving"}


@pytest.mark.parametrize(
    "entities",
    [[], [{"type": "transcript"}], [{"data": {}}], [{"type": 1, "data": {}}], ["x"], "xy"],
)
def test_event_parameters_invalid(entities: Any) -> None:
    with pytest.raises(ValueError):
        event_parameters(entities)
