from __future__ import annotations

import json
from typing import Any

import pytest

from app.client.checks import Checked, Finding, ServerMessageChecker
from app.client.session import media_offers

SID = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
OFFERS = media_offers()
STEREO = OFFERS[0]
_MISSING = object()


def text(msg_type: str, seq: int, clientseq: int, params: Any = _MISSING, /, **fields: Any) -> str:
    message: dict[str, Any] = {
        "version": "2",
        "type": msg_type,
        "id": SID,
        "seq": seq,
        "clientseq": clientseq,
        "parameters": {} if params is _MISSING else params,
    }
    for key, value in fields.items():
        if value is _MISSING:
            del message[key]
        else:
            message[key] = value
    return json.dumps(message)


def opened_checker(**kwargs: Any) -> ServerMessageChecker:
    """A checker that sent open (seq 1) and accepted opened (seq 1)."""
    checker = ServerMessageChecker(SID, OFFERS, **kwargs)
    checker.sent("open", 1)
    assert clean(checker.check_text(text("opened", 1, 1, {"media": [STEREO]})))
    return checker


def assert_phase(checker: ServerMessageChecker, phase: str) -> None:
    assert checker.phase == phase


def clean(checked: Checked) -> bool:
    return checked.accepted and not checked.findings


def only(checked: Checked) -> Finding:
    assert len(checked.findings) == 1, checked.findings
    return checked.findings[0]


def test_happy_path_has_no_findings() -> None:
    checker = opened_checker()
    assert checker.phase == "open"
    assert checker.selected_media == STEREO
    checker.sent("ping", 2)
    assert clean(checker.check_text(text("pong", 2, 2)))
    checker.sent("close", 3)
    assert clean(checker.check_text(text("event", 3, 3, {"entities": [{"type": "x", "data": 1}]})))
    assert clean(checker.check_text(text("closed", 4, 3)))
    assert checker.finish() == []
    assert_phase(checker, "closed")


def test_binary_frame_is_fatal_415_and_names_the_json_inside() -> None:
    checker = opened_checker()
    finding = only(Checked(None, checker.check_binary(text("pong", 2, 1).encode())))
    assert (finding.rule, finding.error_code, finding.fatal) == ("binary-frame", 415, True)
    assert "JSON 'pong' message" in finding.message
    plain = checker.check_binary(b"\x00\x01")[0]
    assert "binary frame of 2 bytes" in plain.message
    assert "JSON" not in plain.message


@pytest.mark.parametrize(
    ("frame", "rule", "code"),
    [
        ("x" * 65536, "too-large", 413),
        ("{not json", "invalid-json", 400),
        ("[1, 2]", "not-an-object", 400),
    ],
)
def test_unreadable_text_is_rejected(frame: str, rule: str, code: int) -> None:
    finding = only(opened_checker().check_text(frame))
    assert (finding.rule, finding.error_code, finding.fatal) == (rule, code, True)


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("version", _MISSING, "version"),
        ("version", 2, "version"),
        ("version", "1", "version"),
        ("id", "e160e428-53e2-487c-977d-96989bf5c99d", "id"),
        ("id", _MISSING, "id"),
        ("parameters", _MISSING, "parameters"),
        ("parameters", [], "parameters"),
        ("parameters", None, "parameters"),
        ("clientseq", _MISSING, "clientseq"),
        ("clientseq", "1", "clientseq"),
        ("clientseq", -1, "clientseq"),
        ("seq", _MISSING, "seq"),
        ("seq", True, "seq"),
        ("seq", 1.0, "seq"),
        ("type", "hello", "unknown-type"),
        ("type", _MISSING, "type"),
    ],
)
def test_envelope_fields_are_checked(field: str, value: Any, rule: str) -> None:
    checker = ServerMessageChecker(SID, OFFERS)
    checker.sent("open", 1)
    checked = checker.check_text(text("opened", 1, 1, {"media": []}, **{field: value}))
    assert not checked.accepted
    finding = next(f for f in checked.findings if f.rule == rule)
    assert finding.fatal
    assert finding.field.endswith(f".{field}")
    assert checker.phase == "opening"  # a rejected opened does not open the session


def test_missing_parameters_names_the_message() -> None:
    checker = ServerMessageChecker(SID, OFFERS)
    checker.sent("open", 1)
    finding = only(checker.check_text(text("opened", 1, 1, parameters=_MISSING)))
    assert finding.field == "opened.parameters"
    assert finding.message == "opened.parameters is missing, expected an object"
    assert "use {} when empty" in finding.hint


def test_seq_must_grow_by_exactly_one() -> None:
    checker = opened_checker()
    checker.sent("ping", 2)
    finding = only(checker.check_text(text("pong", 3, 2)))
    assert (finding.field, finding.expected, finding.actual) == ("pong.seq", 2, 3)
    assert finding.error_code == 500
    assert finding.fatal
    # The next message is judged against the seq that actually arrived.
    assert checker.check_text(
        text("event", 4, 2, {"entities": [{"type": "t", "data": {}}]})
    ).accepted


def test_repeated_seq_is_reported() -> None:
    checker = opened_checker()
    checker.sent("ping", 2)
    assert only(checker.check_text(text("pong", 1, 2))).message == "pong.seq is 1, expected 2"


@pytest.mark.parametrize(
    ("msg_type", "sent", "clientseq", "expected"),
    [
        ("pong", [("ping", 2)], 1, 2),
        ("pong", [("ping", 2), ("paused", 3)], 3, 2),
        ("closed", [("close", 2)], 1, 2),
    ],
)
def test_answers_must_echo_the_seq_they_answer(
    msg_type: str, sent: list[tuple[str, int]], clientseq: int, expected: int
) -> None:
    checker = opened_checker()
    for sent_type, seq in sent:
        checker.sent(sent_type, seq)
    finding = only(checker.check_text(text(msg_type, 2, clientseq)))
    assert finding.field == f"{msg_type}.clientseq"
    assert (finding.expected, finding.actual, finding.fatal) == (expected, clientseq, False)
    assert finding.message == f"{msg_type}.clientseq is {clientseq}, expected {expected}"


def test_closed_clientseq_hint_says_what_to_echo() -> None:
    checker = opened_checker()
    checker.sent("close", 2)
    finding = only(checker.check_text(text("closed", 2, 1)))
    assert finding.text == (
        "closed.clientseq is 1, expected 2: your server must echo the seq of the close it answers"
    )


def test_opened_must_echo_the_open_seq() -> None:
    checker = ServerMessageChecker(SID, OFFERS)
    checker.sent("open", 1)
    finding = only(checker.check_text(text("opened", 1, 0, {"media": []})))
    assert finding.field == "opened.clientseq"


def test_unsolicited_clientseq_must_be_within_what_was_sent() -> None:
    checker = opened_checker()
    checker.sent("paused", 2)
    entity = {"entities": [{"type": "t", "data": {}}]}
    assert only(checker.check_text(text("event", 2, 3, entity))).field == "event.clientseq"
    assert clean(checker.check_text(text("event", 3, 2, entity)))
    backwards = only(checker.check_text(text("event", 4, 1, entity)))
    assert backwards.expected == [2, 2]
    assert backwards.actual == 1


def test_opened_only_in_opening() -> None:
    checker = opened_checker()
    finding = only(checker.check_text(text("opened", 2, 1, {"media": []})))
    assert (finding.rule, finding.error_code, finding.fatal) == ("phase", 409, True)


def test_opened_after_giving_up_is_reported_as_late() -> None:
    checker = ServerMessageChecker(SID, OFFERS)
    checker.sent("open", 1)
    checker.sent("error", 2)
    checker.sent("close", 3)
    checked = checker.check_text(text("opened", 1, 1, {"media": []}))
    assert not checked.accepted
    assert only(checked).rule == "opened-late"


def test_closed_without_close_is_a_phase_error() -> None:
    finding = only(opened_checker().check_text(text("closed", 2, 1)))
    assert (finding.rule, finding.field, finding.error_code) == ("phase", "closed", 409)


@pytest.mark.parametrize(
    ("msg_type", "params"),
    [("pause", {}), ("resume", {}), ("event", {"entities": [{"type": "t", "data": 1}]})],
)
def test_nothing_but_opened_before_opened(msg_type: str, params: dict[str, Any]) -> None:
    checker = ServerMessageChecker(SID, OFFERS)
    checker.sent("open", 1)
    finding = only(checker.check_text(text(msg_type, 1, 1, params)))
    assert (finding.rule, finding.error_code, finding.fatal) == ("phase", 409, True)


def test_disconnect_before_opened_is_fine() -> None:
    checker = ServerMessageChecker(SID, OFFERS)
    checker.sent("open", 1)
    assert clean(checker.check_text(text("disconnect", 1, 1, {"reason": "unauthorized"})))


def test_pong_without_ping() -> None:
    finding = only(opened_checker().check_text(text("pong", 2, 1)))
    assert (finding.rule, finding.error_code, finding.fatal) == ("pong-unsolicited", 409, False)


def test_nothing_after_closed() -> None:
    checker = opened_checker()
    checker.sent("close", 2)
    assert clean(checker.check_text(text("closed", 2, 2)))
    finding = only(
        checker.check_text(text("event", 3, 2, {"entities": [{"type": "t", "data": 1}]}))
    )
    assert finding.rule == "after-closed"
    assert "after 'closed'" in finding.message


def test_unanswered_ping_is_reported_at_the_end() -> None:
    checker = opened_checker()
    checker.sent("ping", 2)
    checker.sent("close", 3)
    assert clean(checker.check_text(text("closed", 2, 3)))
    assert [f.rule for f in checker.finish()] == ["pong-missing"]


# --- opened parameters -----------------------------------------------------------------------


def _opened(params: Any, **kwargs: Any) -> Checked:
    checker = ServerMessageChecker(SID, OFFERS, **kwargs)
    checker.sent("open", 1)
    return checker.check_text(text("opened", 1, 1, params))


@pytest.mark.parametrize("media", [[], [OFFERS[0]], [OFFERS[1]], [OFFERS[2]]])
def test_opened_media_empty_or_one_offer_verbatim(media: list[dict[str, Any]]) -> None:
    assert clean(_opened({"media": media, "startPaused": False}))


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"media": None},
        {"media": STEREO},
        {"media": [OFFERS[0], OFFERS[1]]},
        {"media": [{"type": "audio", "format": "L16", "channels": ["external"], "rate": 8000}]},
        {"media": [{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 16000}]},
        {"media": [{"type": "audio", "format": "PCMU", "channels": ["external"]}]},
        {"media": ["PCMU"]},
    ],
)
def test_opened_media_rejected(params: dict[str, Any]) -> None:
    checked = _opened(params)
    finding = only(checked)
    assert finding.field.startswith("opened.parameters.media")
    assert finding.fatal
    assert finding.error_code == 400
    assert not checked.accepted


def test_reordered_channels_get_a_specific_hint() -> None:
    reordered = dict(STEREO, channels=["internal", "external"])
    finding = only(_opened({"media": [reordered]}))
    assert finding.field == "opened.parameters.media[0]"
    assert "keep the channel order of the offer" in finding.hint
    assert "PCMU[external,internal]@8000" in finding.message


def test_inverted_offers_are_accepted_in_their_order() -> None:
    checker = ServerMessageChecker(SID, media_offers("PCMU", "inverted"))
    checker.sent("open", 1)
    inverted = {
        "type": "audio",
        "format": "PCMU",
        "channels": ["internal", "external"],
        "rate": 8000,
    }
    assert clean(checker.check_text(text("opened", 1, 1, {"media": [inverted]})))


def test_media_with_extra_keys_is_a_warning() -> None:
    finding = only(_opened({"media": [dict(STEREO, extra=1)]}))
    assert finding.severity == "warning"
    assert "extra" in finding.message


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"media": [], "startPaused": "no"}, "opened.parameters.startPaused"),
        ({"media": [], "startPaused": None}, "opened.parameters.startPaused"),
        ({"media": [], "discardTo": "PT1.S"}, "opened.parameters.discardTo"),
        ({"media": [], "discardTo": 1.5}, "opened.parameters.discardTo"),
        ({"media": [], "supportedLanguages": ["en"]}, "opened.parameters.supportedLanguages"),
        ({"media": [], "supportedLanguages": "en-US"}, "opened.parameters.supportedLanguages"),
    ],
)
def test_opened_optional_parameters(params: dict[str, Any], field: str) -> None:
    assert only(_opened(params)).field == field


def test_supported_languages_must_come_when_requested() -> None:
    finding = only(_opened({"media": []}, supported_languages_requested=True))
    assert finding.field == "opened.parameters.supportedLanguages"
    assert not finding.fatal
    ok = {"media": [], "supportedLanguages": ["en-US", "de-DE"]}
    assert clean(_opened(ok, supported_languages_requested=True))


# --- other server messages -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "disconnect.parameters.reason"),
        ({"reason": "bye"}, "disconnect.parameters.reason"),
        ({"reason": "error", "info": 5}, "disconnect.parameters.info"),
    ],
)
def test_disconnect_parameters(params: dict[str, Any], field: str) -> None:
    assert only(opened_checker().check_text(text("disconnect", 2, 1, params))).field == field


@pytest.mark.parametrize("reason", ["completed", "unauthorized", "error"])
def test_disconnect_reasons(reason: str) -> None:
    params = {"reason": reason, "info": "why"}
    assert clean(opened_checker().check_text(text("disconnect", 2, 1, params)))


def test_reconnect_info_must_be_text() -> None:
    checker = opened_checker()
    assert clean(checker.check_text(text("reconnect", 2, 1, {"info": "drain"})))
    assert only(checker.check_text(text("reconnect", 3, 1, {"info": []}))).field == (
        "reconnect.parameters.info"
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "event.parameters.entities"),
        ({"entities": []}, "event.parameters.entities"),
        ({"entities": [{"data": 1}]}, "event.parameters.entities[0].type"),
        ({"entities": ["x"]}, "event.parameters.entities[0].type"),
        ({"entities": [{"type": "t"}]}, "event.parameters.entities[0].data"),
    ],
)
def test_event_entities(params: dict[str, Any], field: str) -> None:
    finding = only(opened_checker().check_text(text("event", 2, 1, params)))
    assert finding.field == field
    assert finding.fatal


def _transcript(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "e160e428-53e2-487c-977d-96989bf5c99d",
        "channelId": 0,
        "isFinal": True,
        "offset": "PT1.1S",
        "duration": "PT1.6S",
        "alternatives": [{"confidence": 0.9, "interpretations": []}],
    }
    data.update(changes)
    return {"entities": [{"type": "transcript", "data": data}]}


def test_a_good_transcript_passes() -> None:
    assert clean(opened_checker().check_text(text("event", 2, 1, _transcript())))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": "nope"}, "id"),
        ({"channelId": 2}, "channelId"),
        ({"channelId": True}, "channelId"),
        ({"offset": "1.1"}, "offset"),
        ({"alternatives": []}, "alternatives"),
        ({"alternatives": [{"confidence": 1.5}]}, "alternatives[0].confidence"),
    ],
)
def test_transcript_fields_are_reported_without_ending_the_session(
    changes: dict[str, Any], field: str
) -> None:
    checked = opened_checker().check_text(text("event", 2, 1, _transcript(**changes)))
    finding = only(checked)
    assert finding.field == f"event.parameters.entities[0].data.{field}"
    assert not finding.fatal
    assert checked.accepted


def test_interim_transcripts_are_not_inspected_further() -> None:
    interim = _transcript(isFinal=False, alternatives=[])
    assert clean(opened_checker().check_text(text("event", 2, 1, interim)))
