"""ServerSession state machine (docs/protocol.md §4) and its deliberate improvements."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.protocol.media import MediaFormat, MediaPolicy
from app.protocol.messages import NULL_UUID
from app.protocol.session import (
    AudioFrame,
    ClientError,
    CloseConnection,
    Discarded,
    DisconnectSent,
    InvalidStateError,
    LanguageUpdated,
    Output,
    Paused,
    PingReceived,
    ProtocolViolation,
    Resumed,
    SendText,
    ServerSession,
    SessionClosed,
    SessionConfig,
    SessionOpened,
    SessionState,
)
from tests.unit.protocol.helpers import (
    CONVERSATION_ID,
    L16_STEREO,
    MONO_EXTERNAL,
    MONO_INTERNAL,
    ORG_ID,
    SESSION_ID,
    STEREO,
    STEREO_INVERTED,
    Client,
    make_session,
    of_type,
    open_parameters,
    opened_session,
    probe_open_parameters,
    sent_types,
    server_messages,
)

S = SessionState
OTHER_ORG = "9f3c1c7e-2a4b-4c5d-8e6f-0a1b2c3d4e5f"


def session_in(state: SessionState, config: SessionConfig | None = None) -> tuple[Any, Client]:
    """A session driven by a well-behaved client into `state`."""
    if state is S.PREPARING:
        return make_session(config)
    if state is S.OPENING:
        session, client = make_session(config, authenticated=None)
        assert client.send("open", open_parameters()) == []
        return session, client
    if state is S.UNAUTHORIZED:
        session, client = make_session(config, authenticated=None)
        client.observe(session.complete_authentication(False, 0.0))
        return session, client
    session, client = opened_session(config)
    if state is S.PAUSED:
        client.send("paused")
    elif state is S.SIGNALED_ERROR:
        client.observe(session.disconnect("error", "boom", 0.0))
    elif state is S.DISCONNECTING:
        client.observe(session.disconnect("completed", None, 0.0))
    elif state is S.CLOSED:
        client.send("close", {"reason": "end"})
    elif state is S.DISCONNECTED:
        session.connection_lost(0.0)
    assert session.state is state
    return session, client


def only_violation(outputs: list[Output], kind: str) -> None:
    """A violation that is reported but not answered (nothing is sent)."""
    assert len(outputs) == 1
    assert isinstance(outputs[0], ProtocolViolation)
    assert outputs[0].kind == kind


def disconnect_error(outputs: list[Output], kind: str, info: str) -> None:
    """A violation answered with `disconnect` error."""
    assert outputs[0] == ProtocolViolation(kind, info)  # type: ignore[arg-type]
    messages = server_messages(outputs)
    assert [m["type"] for m in messages] == ["disconnect"]
    assert messages[0]["parameters"] == {"reason": "error", "info": info}
    assert of_type(outputs, DisconnectSent) == [DisconnectSent("error", info)]


# --- happy path and envelope of server messages ------------------------------------------


def test_minimal_happy_path() -> None:
    session, client = make_session()
    outputs = client.send("open", open_parameters(), now=1.0)
    [opened] = server_messages(outputs)
    assert opened == {
        "version": "2",
        "type": "opened",
        "id": SESSION_ID,
        "seq": 1,
        "clientseq": 1,
        "parameters": {"media": [STEREO], "startPaused": False},
    }
    [event] = of_type(outputs, SessionOpened)
    assert event.session_id == SESSION_ID
    assert event.organization_id == ORG_ID
    assert event.conversation_id == CONVERSATION_ID
    assert event.media == MediaFormat("PCMU", ("external", "internal"))
    assert event.selected_offer == STEREO
    assert event.offered_media == [STEREO, MONO_EXTERNAL, MONO_INTERNAL]
    assert event.language == "en-US"
    assert event.open_received_at == 1.0
    assert not event.is_probe
    assert isinstance(outputs[0], SendText)  # `opened` goes out before the domain event
    assert session.state is S.ACTIVE

    frame = client.audio(b"\xff" * 3200, now=1.2)
    assert frame == [AudioFrame(b"\xff" * 3200, 0, 1600)]

    pong = client.send("ping", {"rtt": "PT0.05S"}, now=2.0)
    assert server_messages(pong)[0] == {
        "version": "2",
        "type": "pong",
        "id": SESSION_ID,
        "seq": 2,
        "clientseq": 2,
        "parameters": {},
    }
    assert of_type(pong, PingReceived) == [PingReceived(0.05)]

    closed = client.send("close", {"reason": "end"}, now=3.0)
    assert server_messages(closed)[0]["seq"] == 3
    assert server_messages(closed)[0]["clientseq"] == 3
    assert server_messages(closed)[0]["type"] == "closed"
    assert of_type(closed, SessionClosed) == [SessionClosed("end", 1, 3200, 1600)]
    assert session.state is S.CLOSED
    assert not session.is_finished
    assert session.connection_lost(3.1) == []
    assert session.state is S.DISCONNECTED
    assert session.is_finished


def test_session_id_must_be_uuid() -> None:
    with pytest.raises(ValueError):
        ServerSession("nope", SessionConfig(), 0.0, organization_header=ORG_ID)


def test_authenticated_false_is_rejected() -> None:
    with pytest.raises(ValueError):
        ServerSession(
            SESSION_ID, SessionConfig(), 0.0, organization_header=ORG_ID, authenticated=False
        )


@pytest.mark.parametrize(
    "kwargs",
    [{"open_timeout": 0}, {"idle_timeout": -1}, {"close_timeout": 0.0}, {"max_frame_bytes": 0}],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SessionConfig(**kwargs)


# --- docs/protocol.md §4.2: open -------------------------------------------------------------


@pytest.mark.parametrize(
    "state", [S.OPENING, S.ACTIVE, S.PAUSED, S.SIGNALED_ERROR, S.UNAUTHORIZED, S.DISCONNECTING]
)
def test_open_outside_preparing_is_ignored(state: SessionState) -> None:
    session, client = session_in(state)
    assert client.send("open", open_parameters()) == []
    assert session.state is state


def test_open_with_inverted_channels_echoes_order() -> None:
    session, client = make_session()
    outputs = client.send("open", open_parameters(media=[STEREO_INVERTED, MONO_INTERNAL]))
    assert server_messages(outputs)[0]["parameters"]["media"] == [STEREO_INVERTED]
    assert session.selected_media == MediaFormat("PCMU", ("internal", "external"))


@pytest.mark.parametrize(
    ("offers", "expected"),
    [([MONO_EXTERNAL], MONO_EXTERNAL), ([MONO_INTERNAL], MONO_INTERNAL), ([STEREO], STEREO)],
)
def test_open_single_offer(offers: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    _, client = make_session()
    outputs = client.send("open", open_parameters(media=offers))
    assert server_messages(outputs)[0]["parameters"]["media"] == [expected]


def test_open_without_offers_opens_with_no_media() -> None:
    session, client = make_session()
    outputs = client.send("open", open_parameters(media=[]))
    assert server_messages(outputs)[0]["parameters"] == {"media": [], "startPaused": False}
    assert session.selected_media is None
    assert session.state is S.ACTIVE
    # No media selected: any audio is a violation.
    disconnect_error(
        client.audio(b""),
        "audio_not_allowed",
        "Client Error: Received audio but no media was selected",
    )


def test_open_without_supported_media_disconnects() -> None:
    session, client = make_session(SessionConfig(media_policy=MediaPolicy(formats=("L16",))))
    outputs = client.send("open", open_parameters())
    [message] = server_messages(outputs)
    assert message["type"] == "disconnect"
    assert message["parameters"] == {"reason": "error", "info": "no supported media"}
    assert of_type(outputs, SessionOpened) == []
    assert session.state is S.SIGNALED_ERROR


def test_open_l16_policy_selects_l16() -> None:
    config = SessionConfig(media_policy=MediaPolicy(formats=("L16",)))
    session, client = make_session(config)
    client.send("open", open_parameters(media=[STEREO, L16_STEREO]))
    assert session.selected_media == MediaFormat("L16", ("external", "internal"))
    assert client.audio(b"\0" * 8)[0] == AudioFrame(b"\0" * 8, 0, 2)
    disconnect_error(
        client.audio(b"\0" * 6),
        "bad_frame_size",
        "Client Error: Audio frame is not a whole number of samples",
    )


def test_open_supported_languages_only_when_requested() -> None:
    config = SessionConfig(supported_languages=("en-US", "de-DE"))
    _, client = make_session(config)
    outputs = client.send("open", open_parameters(supportedLanguages=True))
    assert server_messages(outputs)[0]["parameters"]["supportedLanguages"] == ["en-US", "de-DE"]

    _, client = make_session(config)
    outputs = client.send("open", open_parameters(supportedLanguages=False))
    assert "supportedLanguages" not in server_messages(outputs)[0]["parameters"]

    _, client = make_session()
    outputs = client.send("open", open_parameters(supportedLanguages=True))
    assert server_messages(outputs)[0]["parameters"]["supportedLanguages"] == []


def test_open_start_paused_from_config() -> None:
    _, client = make_session(SessionConfig(start_paused=True))
    outputs = client.send("open", open_parameters())
    assert server_messages(outputs)[0]["parameters"]["startPaused"] is True
    assert of_type(outputs, SessionOpened)[0].start_paused is True


@pytest.mark.parametrize("state", [S.PREPARING, S.OPENING])
def test_pause_and_resume_before_opened_set_start_paused(state: SessionState) -> None:
    session, client = session_in(state)
    assert session.pause(0.0) == []
    if state is S.PREPARING:
        outputs = client.send("open", open_parameters())
    else:
        outputs = session.complete_authentication(True, 0.0)
    assert server_messages(outputs)[0]["parameters"]["startPaused"] is True

    session, client = session_in(state, SessionConfig(start_paused=True))
    assert session.resume(0.0) == []
    if state is S.PREPARING:
        outputs = client.send("open", open_parameters())
    else:
        outputs = session.complete_authentication(True, 0.0)
    assert server_messages(outputs)[0]["parameters"]["startPaused"] is False


def test_probe_is_flagged_and_runs_like_any_session() -> None:
    session, client = make_session()
    outputs = client.send("open", probe_open_parameters())
    assert session.is_probe
    [event] = of_type(outputs, SessionOpened)
    assert event.is_probe
    assert event.language is None
    assert event.custom_config == {}
    assert event.participant["id"] == NULL_UUID
    assert client.audio(b"") == [AudioFrame(b"", 0, 0)]  # the probe's zero-length frame
    outputs = client.send("close", {"reason": "end"})
    assert sent_types(outputs) == ["closed"]
    assert of_type(outputs, SessionClosed) == [SessionClosed("end", 1, 0, 0)]


def test_open_details_are_reported() -> None:
    continued = [{"id": OTHER_ORG, "serverseq": 3, "clientseq": 8}]
    _, client = make_session()
    outputs = client.send(
        "open", open_parameters(continuedSessions=continued, customConfig={"a": 1})
    )
    [event] = of_type(outputs, SessionOpened)
    assert event.continued_sessions == continued
    assert event.custom_config == {"a": 1}
    assert event.participant["ani"] == "+1-555-555-1234"


# --- open: organisation and authentication ----------------------------------------------


@pytest.mark.parametrize("header", [None, "", OTHER_ORG])
def test_open_organization_header_must_match(header: str | None) -> None:
    session, client = make_session(organization_header=header)
    outputs = client.send("open", open_parameters())
    [message] = server_messages(outputs)
    assert message["type"] == "disconnect"
    assert message["parameters"]["reason"] == "unauthorized"
    assert of_type(outputs, DisconnectSent)[0].reason == "unauthorized"
    assert session.state is S.UNAUTHORIZED
    # The client answers with close; it gets `closed`.
    outputs = client.send("close", {"reason": "disconnect"})
    assert sent_types(outputs) == ["closed"]


def test_open_organization_compare_ignores_case() -> None:
    session, client = make_session(organization_header=ORG_ID.upper())
    assert sent_types(client.send("open", open_parameters())) == ["opened"]
    assert session.state is S.ACTIVE


def test_open_allowed_organizations() -> None:
    config = SessionConfig(allowed_organizations=frozenset({ORG_ID.upper()}))
    session, client = make_session(config)
    assert sent_types(client.send("open", open_parameters())) == ["opened"]

    config = SessionConfig(allowed_organizations=frozenset({OTHER_ORG}))
    session, client = make_session(config)
    outputs = client.send("open", open_parameters())
    assert server_messages(outputs)[0]["parameters"]["reason"] == "unauthorized"
    assert session.state is S.UNAUTHORIZED


def test_auth_pending_defers_opened() -> None:
    session, client = make_session(authenticated=None)
    assert client.send("open", open_parameters(), now=1.0) == []
    assert session.state is S.OPENING
    # Ping while waiting is answered.
    assert sent_types(client.send("ping", now=1.1)) == ["pong"]
    outputs = session.complete_authentication(True, 1.5)
    client.observe(outputs)
    [opened] = server_messages(outputs)
    assert opened["type"] == "opened"
    assert opened["seq"] == 2
    assert opened["clientseq"] == 2
    assert of_type(outputs, SessionOpened)[0].open_received_at == 1.0
    assert session.state is S.ACTIVE
    assert session.complete_authentication(False, 2.0) == []  # already decided


def test_auth_success_before_open() -> None:
    session, client = make_session(authenticated=None)
    assert session.complete_authentication(True, 0.1) == []
    assert sent_types(client.send("open", open_parameters())) == ["opened"]


def test_auth_failure_before_open() -> None:
    session, client = make_session(authenticated=None)
    outputs = session.complete_authentication(False, 0.2, "FAILED: Signatures do not match")
    client.observe(outputs)
    assert server_messages(outputs)[0]["parameters"] == {
        "reason": "unauthorized",
        "info": "FAILED: Signatures do not match",
    }
    assert server_messages(outputs)[0]["clientseq"] == 0
    assert session.state is S.UNAUTHORIZED
    assert client.send("open", open_parameters()) == []  # ignored
    outputs = client.send("close", {"reason": "disconnect"})
    assert sent_types(outputs) == ["closed"]
    assert server_messages(outputs)[0]["clientseq"] == 2


def test_auth_failure_while_open_pending() -> None:
    session, _client = session_in(S.OPENING)
    outputs = session.complete_authentication(False, 0.3)
    assert server_messages(outputs)[0]["parameters"] == {
        "reason": "unauthorized",
        "info": "Unauthorized",
    }
    assert of_type(outputs, SessionOpened) == []
    assert session.state is S.UNAUTHORIZED


def test_org_mismatch_wins_over_pending_auth() -> None:
    session, client = make_session(organization_header=OTHER_ORG, authenticated=None)
    outputs = client.send("open", open_parameters())
    assert server_messages(outputs)[0]["parameters"]["reason"] == "unauthorized"
    assert session.complete_authentication(True, 0.1) == []
    assert session.state is S.UNAUTHORIZED


def test_connection_lost_while_auth_pending() -> None:
    session, _ = session_in(S.OPENING)
    outputs = session.connection_lost(0.5)
    assert outputs == [SessionClosed(None, 0, 0, 0)]
    assert session.state is S.FINALIZING
    assert session.is_finished
    assert session.complete_authentication(True, 0.6) == []
    assert session.state is S.DISCONNECTED


# --- docs/protocol.md §4.2: close ------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        S.PREPARING,
        S.OPENING,
        S.ACTIVE,
        S.PAUSED,
        S.SIGNALED_ERROR,
        S.UNAUTHORIZED,
        S.DISCONNECTING,
    ],
)
def test_close_is_answered_in_state(state: SessionState) -> None:
    session, client = session_in(state)
    outputs = client.send("close", {"reason": "disconnect"}, now=1.0)
    [closed] = server_messages(outputs)
    assert closed["type"] == "closed"
    assert closed["clientseq"] == client.seq
    assert closed["parameters"] == {}
    assert of_type(outputs, SessionClosed)[0].reason == "disconnect"
    assert session.state is S.CLOSED


def test_close_while_open_pending_sends_no_opened() -> None:
    session, client = session_in(S.OPENING)
    assert sent_types(client.send("close", {"reason": "end"})) == ["closed"]
    assert session.complete_authentication(True, 1.0) == []
    assert session.state is S.CLOSED


def test_nothing_after_closed() -> None:
    session, client = session_in(S.CLOSED)
    for msg_type, parameters in [
        ("ping", {}),
        ("close", {"reason": "end"}),
        ("update", {"language": "de-DE"}),
        ("open", open_parameters()),
        ("paused", {}),
        ("discarded", {"start": "PT0S", "discarded": "PT1S"}),
        ("error", {"code": 500, "message": "x"}),
    ]:
        assert client.send(msg_type, parameters) == []
    assert client.audio(b"\0\0") == []  # dropped and counted, not reported frame by frame
    assert client.send_raw("{") == []  # counted, never reported
    assert session.messages_after_end == 9
    for action in (
        lambda: session.pause(1.0),
        lambda: session.resume(1.0),
        lambda: session.disconnect("completed", None, 1.0),
        lambda: session.reconnect(None, 1.0),
        lambda: session.send_event([{"type": "transcript", "data": {}}], 1.0),
    ):
        with pytest.raises(InvalidStateError):
            action()
    assert session.state is S.CLOSED


# --- docs/protocol.md §4.2: ping -------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        S.PREPARING,
        S.OPENING,
        S.ACTIVE,
        S.PAUSED,
        S.SIGNALED_ERROR,
        S.UNAUTHORIZED,
        S.DISCONNECTING,
    ],
)
def test_ping_is_answered_in_state(state: SessionState) -> None:
    session, client = session_in(state)
    outputs = client.send("ping")
    [pong] = server_messages(outputs)
    assert pong["type"] == "pong"
    assert pong["clientseq"] == client.seq
    assert of_type(outputs, PingReceived) == [PingReceived(None)]
    assert session.state is state


# --- docs/protocol.md §4.2: update -----------------------------------------------------------


@pytest.mark.parametrize("state", [S.ACTIVE, S.PAUSED])
def test_update_is_applied(state: SessionState) -> None:
    session, client = session_in(state)
    outputs = client.send("update", {"language": "de-DE"})
    assert sent_types(outputs) == ["updated"]
    assert server_messages(outputs)[0]["parameters"] == {}
    assert of_type(outputs, LanguageUpdated) == [LanguageUpdated("de-DE")]
    assert session.language == "de-DE"
    assert session.state is state


@pytest.mark.parametrize(
    "state", [S.PREPARING, S.OPENING, S.SIGNALED_ERROR, S.UNAUTHORIZED, S.DISCONNECTING]
)
def test_update_is_ignored(state: SessionState) -> None:
    session, client = session_in(state)
    assert client.send("update", {"language": "de-DE"}) == []
    assert session.state is state


# --- docs/protocol.md §4.2: paused / resumed -------------------------------------------------


def test_paused_and_resumed() -> None:
    session, client = opened_session()
    client.audio(b"\0" * 3200)
    outputs = client.send("paused")
    assert outputs == [Paused(1600)]
    assert session.state is S.PAUSED
    assert client.send("paused") == []  # duplicate is harmless
    assert session.state is S.PAUSED
    outputs = client.send("resumed", {"start": "PT0.2S", "discarded": "PT10S"})
    assert outputs == [Resumed(1600, 80000)]
    assert session.state is S.ACTIVE
    assert session.position_samples == 1600 + 80000
    assert client.audio(b"\0" * 2) == [AudioFrame(b"\0\0", 81600, 1)]


def test_resumed_while_active_is_ignored() -> None:
    session, client = opened_session()
    assert client.send("resumed", {"start": "PT0S", "discarded": "PT1S"}) == []
    assert session.position_samples == 0
    assert session.state is S.ACTIVE


@pytest.mark.parametrize(
    "state", [S.PREPARING, S.OPENING, S.SIGNALED_ERROR, S.UNAUTHORIZED, S.DISCONNECTING]
)
def test_paused_and_resumed_ignored_outside_streaming(state: SessionState) -> None:
    session, client = session_in(state)
    assert client.send("paused") == []
    assert client.send("resumed", {"start": "PT0S", "discarded": "PT0S"}) == []
    assert session.state is state


# --- docs/protocol.md §4.2: discarded / error ------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [S.PREPARING, S.ACTIVE, S.PAUSED, S.SIGNALED_ERROR, S.DISCONNECTING],
)
def test_discarded_and_error_are_recorded(state: SessionState) -> None:
    session, client = session_in(state)
    outputs = client.send("discarded", {"start": "PT6.3S", "discarded": "PT0.3S"})
    assert outputs == [Discarded(50400, 2400)]
    assert session.position_samples == 2400
    outputs = client.send("error", {"code": 400, "message": "tough stuff"})
    assert outputs == [ClientError(400, "tough stuff", None)]
    outputs = client.send("error", {"code": 429, "message": "slow", "retryAfter": "PT1.5S"})
    assert outputs == [ClientError(429, "slow", 1.5)]
    assert session.state is state


@pytest.mark.parametrize("state", [S.OPENING, S.UNAUTHORIZED])
def test_discarded_and_error_are_ignored_while_not_authenticated(state: SessionState) -> None:
    # OPENING here waits for a pending authentication; UNAUTHORIZED failed it. Such a client
    # must not be able to move metrics or write log lines.
    session, client = session_in(state)
    assert client.send("discarded", {"start": "PT6.3S", "discarded": "PT0.3S"}) == []
    assert client.send("error", {"code": 400, "message": "tough stuff"}) == []
    assert session.position_samples == 0
    assert session.state is state


def test_error_then_close_is_not_aborted() -> None:
    _session, client = opened_session()
    client.send("error", {"code": 400, "message": "tough stuff"})
    outputs = client.send("close", {"reason": "error"})
    assert sent_types(outputs) == ["closed"]
    assert server_messages(outputs)[0]["seq"] == 2
    assert server_messages(outputs)[0]["clientseq"] == 3


# --- docs/protocol.md §4.2: binary frames ----------------------------------------------------


def test_audio_position_and_counters() -> None:
    session, client = opened_session()
    assert client.audio(b"\1" * 3200) == [AudioFrame(b"\1" * 3200, 0, 1600)]
    assert client.audio(b"") == [AudioFrame(b"", 1600, 0)]
    client.send("discarded", {"start": "PT0.2S", "discarded": "PT1S"})
    assert client.audio(b"\1" * 10) == [AudioFrame(b"\1" * 10, 9600, 5)]
    assert session.position_samples == 9605
    assert session.frames_received == 3
    assert session.bytes_received == 3210


@pytest.mark.parametrize("state", [S.PREPARING, S.OPENING, S.PAUSED])
def test_audio_outside_active_disconnects(state: SessionState) -> None:
    session, client = session_in(state)
    outputs = client.audio(b"\0" * 160)
    disconnect_error(outputs, "audio_not_allowed", f"Client Error: Received audio in state {state}")
    assert session.state is S.SIGNALED_ERROR
    assert session.frames_received == 0


@pytest.mark.parametrize("state", [S.SIGNALED_ERROR, S.UNAUTHORIZED])
def test_audio_after_disconnect_is_dropped_and_counted(state: SessionState) -> None:
    # Frames still in flight when the server ended the session: no log line or violation
    # per frame, one count in SessionClosed.
    session, client = session_in(state)
    assert client.audio(b"\0" * 160) == []
    assert client.audio(b"\0" * 160) == []
    assert session.state is state
    closed = of_type(client.send("close", {"reason": "disconnect"}), SessionClosed)
    assert len(closed) == 1
    assert closed[0].frames_dropped == 2


def test_audio_after_connection_lost_is_ignored() -> None:
    _session, client = session_in(S.DISCONNECTED)
    assert client.audio(b"\0\0") == []
    assert client.send("ping") == []


def test_frame_too_large() -> None:
    _session, client = opened_session(SessionConfig(max_frame_bytes=3200))
    assert len(client.audio(b"\0" * 3200)) == 1
    disconnect_error(
        client.audio(b"\0" * 3202), "frame_too_large", "Client Error: Audio frame too large"
    )


@pytest.mark.parametrize("size", [1, 3, 3199, 3201])
def test_frame_with_partial_sample_group(size: int) -> None:
    session, client = opened_session()  # PCMU stereo: 2-byte groups
    disconnect_error(
        client.audio(b"\0" * size),
        "bad_frame_size",
        "Client Error: Audio frame is not a whole number of samples",
    )
    assert session.position_samples == 0


def test_mono_frames_of_any_length() -> None:
    _session, client = opened_session(media=[MONO_EXTERNAL])
    assert client.audio(b"\0" * 3)[0] == AudioFrame(b"\0" * 3, 0, 3)


# --- server-initiated actions ------------------------------------------------------------


@pytest.mark.parametrize("state", [S.ACTIVE, S.PAUSED])
def test_pause_resume_sent_in_streaming_states(state: SessionState) -> None:
    session, client = session_in(state)
    for action, msg_type in [(session.pause, "pause"), (session.resume, "resume")]:
        outputs = action(1.0)
        [message] = server_messages(outputs)
        client.observe(outputs)
        assert message["type"] == msg_type
        assert message["parameters"] == {}
        assert message["clientseq"] == client.seq
    assert session.state is state  # only the client's paused/resumed change the state


def test_server_pause_then_client_paused() -> None:
    session, client = opened_session()
    client.observe(session.pause(1.0))
    assert session.state is S.ACTIVE
    assert client.audio(b"\0\0")  # audio in flight is still fine
    assert client.send("paused") == [Paused(1)]
    client.observe(session.resume(2.0))
    assert client.send("resumed", {"start": "PT0.000125S", "discarded": "PT1S"}) == [
        Resumed(1, 8000)
    ]


@pytest.mark.parametrize(
    "state", [S.SIGNALED_ERROR, S.UNAUTHORIZED, S.DISCONNECTING, S.CLOSED, S.DISCONNECTED]
)
def test_pause_resume_rejected(state: SessionState) -> None:
    session, _ = session_in(state)
    with pytest.raises(InvalidStateError):
        session.pause(1.0)
    with pytest.raises(InvalidStateError):
        session.resume(1.0)


@pytest.mark.parametrize("state", [S.PREPARING, S.OPENING, S.ACTIVE, S.PAUSED])
@pytest.mark.parametrize(
    ("reason", "next_state"),
    [
        ("completed", S.DISCONNECTING),
        ("unauthorized", S.UNAUTHORIZED),
        ("error", S.SIGNALED_ERROR),
    ],
)
def test_disconnect_allowed(state: SessionState, reason: Any, next_state: SessionState) -> None:
    session, _client = session_in(state)
    outputs = session.disconnect(reason, "bye", 1.0)
    [message] = server_messages(outputs)
    assert message["type"] == "disconnect"
    assert message["parameters"] == {"reason": reason, "info": "bye"}
    assert of_type(outputs, DisconnectSent) == [DisconnectSent(reason, "bye")]
    assert session.state is next_state
    assert session.next_deadline == 1.0 + SessionConfig().close_timeout


def test_disconnect_without_info() -> None:
    session, _ = opened_session()
    outputs = session.disconnect("completed", None, 1.0)
    assert server_messages(outputs)[0]["parameters"] == {"reason": "completed"}


@pytest.mark.parametrize(
    "state", [S.SIGNALED_ERROR, S.UNAUTHORIZED, S.DISCONNECTING, S.CLOSED, S.DISCONNECTED]
)
def test_disconnect_rejected(state: SessionState) -> None:
    session, _ = session_in(state)
    with pytest.raises(InvalidStateError):
        session.disconnect("error", None, 1.0)


def test_disconnect_while_open_pending_sends_no_opened() -> None:
    session, _ = session_in(S.OPENING)
    session.disconnect("error", "shutting down", 1.0)
    assert session.complete_authentication(True, 1.1) == []
    assert session.state is S.SIGNALED_ERROR


def test_completed_disconnect_drains_audio_until_close() -> None:
    session, client = opened_session()
    client.audio(b"\0" * 3200)
    client.observe(session.disconnect("completed", None, 1.0))
    assert client.audio(b"\0" * 3200) == [AudioFrame(b"\0" * 3200, 1600, 1600)]
    # A bad frame during the drain is only reported: the disconnect is already sent.
    only_violation(client.audio(b"\0"), "bad_frame_size")
    outputs = client.send("close", {"reason": "disconnect"})
    assert sent_types(outputs) == ["closed"]
    assert of_type(outputs, SessionClosed) == [SessionClosed("disconnect", 2, 6400, 3200)]
    assert client.audio(b"\0\0") == []


def test_completed_disconnect_from_paused_accepts_drain() -> None:
    session, client = session_in(S.PAUSED)
    client.observe(session.disconnect("completed", None, 1.0))
    assert len(of_type(client.audio(b"\0\0"), AudioFrame)) == 1


def test_completed_disconnect_before_opened_accepts_no_audio() -> None:
    session, client = session_in(S.PREPARING)
    client.observe(session.disconnect("completed", None, 1.0))
    assert client.audio(b"\0\0") == []
    assert session.frames_received == 0


def test_reconnect_keeps_streaming_until_close() -> None:
    session, client = opened_session()
    outputs = session.reconnect("moving to another node", 1.0)
    client.observe(outputs)
    assert server_messages(outputs)[0]["type"] == "reconnect"
    assert server_messages(outputs)[0]["parameters"] == {"info": "moving to another node"}
    assert session.reconnect_requested
    assert session.state is S.ACTIVE
    assert client.audio(b"\0" * 4) == [AudioFrame(b"\0" * 4, 0, 2)]
    assert sent_types(client.send("ping")) == ["pong"]
    outputs = client.send("close", {"reason": "reconnect"})
    assert sent_types(outputs) == ["closed"]
    assert of_type(outputs, SessionClosed)[0].reason == "reconnect"


def test_reconnect_without_info_and_then_disconnect() -> None:
    session, _ = opened_session()
    assert server_messages(session.reconnect(None, 1.0))[0]["parameters"] == {}
    assert sent_types(session.disconnect("completed", None, 5.0)) == ["disconnect"]


@pytest.mark.parametrize(
    "state",
    [S.PREPARING, S.OPENING, S.SIGNALED_ERROR, S.UNAUTHORIZED, S.DISCONNECTING, S.CLOSED],
)
def test_reconnect_rejected(state: SessionState) -> None:
    session, _ = session_in(state)
    with pytest.raises(InvalidStateError):
        session.reconnect(None, 1.0)


@pytest.mark.parametrize("state", [S.ACTIVE, S.PAUSED])
def test_send_event(state: SessionState) -> None:
    session, _client = session_in(state)
    entity = {"type": "transcript", "data": {"id": SESSION_ID, "channelId": 0, "isFinal": True}}
    outputs = session.send_event([entity], 1.0)
    [message] = server_messages(outputs)
    assert message["type"] == "event"
    assert message["parameters"] == {"entities": [entity]}
    assert message["seq"] == 2


@pytest.mark.parametrize(
    "state",
    [
        S.PREPARING,
        S.OPENING,
        S.SIGNALED_ERROR,
        S.UNAUTHORIZED,
        S.DISCONNECTING,
        S.CLOSED,
        S.DISCONNECTED,
    ],
)
def test_send_event_rejected(state: SessionState) -> None:
    session, _ = session_in(state)
    with pytest.raises(InvalidStateError):
        session.send_event([{"type": "transcript", "data": {}}], 1.0)


@pytest.mark.parametrize(
    "entities", [[], [{"type": "transcript"}], [{"type": "x", "data": object()}]]
)
def test_send_event_invalid_entities_leave_no_seq_gap(entities: Any) -> None:
    session, _ = opened_session()
    with pytest.raises(ValueError):
        session.send_event(entities, 1.0)
    assert server_messages(session.pause(1.0))[0]["seq"] == 2


# --- inbound pipeline --------------------------------------------------------------------


def test_text_too_large() -> None:
    session, client = opened_session()
    text = client.text("ping", {"pad": "x" * 70000})
    disconnect_error(client.send_raw(text), "too_large", "Client Error: Message too large")
    assert session.state is S.SIGNALED_ERROR


def test_invalid_json() -> None:
    _, client = opened_session()
    disconnect_error(
        client.send_raw("{not json"), "invalid_json", "Client Error: Message is not valid JSON"
    )


def test_malformed_message() -> None:
    _, client = opened_session()
    text = client.text("ping", seq=True)
    disconnect_error(
        client.send_raw(text),
        "malformed_message",
        "Client Error: Not a well-formed client message",
    )


def test_unknown_type() -> None:
    _, client = opened_session()
    disconnect_error(
        client.send("dtmf", {"digit": "1"}),
        "unknown_type",
        "Client Error: 'dtmf' is not a supported client message",
    )


def test_bad_parameters() -> None:
    _, client = opened_session()
    disconnect_error(
        client.send("close", {"reason": "because"}),
        "bad_parameters",
        "Client Error: Invalid close parameter 'reason'",
    )


def test_bad_parameters_then_close_is_answered() -> None:
    _session, client = opened_session()
    client.send("update", {"language": "english"})
    outputs = client.send("close", {"reason": "disconnect"})
    assert sent_types(outputs) == ["closed"]
    assert server_messages(outputs)[0]["clientseq"] == client.seq


def test_bad_seq_then_close_is_answered() -> None:
    """Unlike the reference, the seq counter resynchronises so `close` still gets `closed`."""
    session, client = opened_session()
    outputs = client.send("ping", seq=5)
    disconnect_error(outputs, "bad_seq", "Client Error: Invalid seq")
    assert server_messages(outputs)[0]["clientseq"] == 5
    assert session.state is S.SIGNALED_ERROR
    client.seq = 5
    outputs = client.send("close", {"reason": "disconnect"})
    [closed] = server_messages(outputs)
    assert closed["type"] == "closed"
    assert closed["clientseq"] == 6
    assert closed["seq"] == 3
    assert session.state is S.CLOSED


def test_repeated_seq_is_bad() -> None:
    _session, client = opened_session()
    disconnect_error(client.send("ping", seq=1), "bad_seq", "Client Error: Invalid seq")


def test_bad_seq_on_close_is_still_answered() -> None:
    session, client = opened_session()
    outputs = client.send("close", {"reason": "end"}, seq=9)
    assert sent_types(outputs) == ["disconnect", "closed"]
    assert [m["clientseq"] for m in server_messages(outputs)] == [9, 9]
    assert of_type(outputs, SessionClosed)[0].reason == "end"
    assert session.state is S.CLOSED


def test_close_after_malformed_message_is_answered() -> None:
    """The malformed message used a seq the server could not read; close resyncs."""
    _session, client = opened_session()
    client.send_raw(client.text("ping", position="bogus"))  # consumes client seq 2
    outputs = client.send("close", {"reason": "disconnect"})  # seq 3, server expected 2
    assert of_type(outputs, ProtocolViolation) == []  # after the disconnect: not reported
    assert sent_types(outputs) == ["closed"]
    assert server_messages(outputs)[0]["clientseq"] == 3


def test_bad_serverseq() -> None:
    _session, client = opened_session()
    outputs = client.send("ping", serverseq=2)  # server has sent only seq 1
    disconnect_error(outputs, "bad_serverseq", "Client Error: Invalid serverseq")
    assert server_messages(outputs)[0]["clientseq"] == 2


def test_serverseq_may_lag() -> None:
    _session, client = opened_session()
    assert sent_types(client.send("ping", serverseq=0)) == ["pong"]


def test_id_mismatch() -> None:
    session, client = opened_session()
    disconnect_error(
        client.send("ping", id=OTHER_ORG),
        "id_mismatch",
        "Client Error: Session identifier mismatch",
    )
    assert session.session_id == SESSION_ID


def test_null_session_id_adopts_message_id() -> None:
    session, client = make_session(session_id=NULL_UUID)
    client.session_id = SESSION_ID
    outputs = client.send("open", open_parameters())
    assert session.session_id == SESSION_ID
    assert server_messages(outputs)[0]["id"] == SESSION_ID
    assert of_type(outputs, SessionOpened)[0].session_id == SESSION_ID
    disconnect_error(
        client.send("ping", id=OTHER_ORG),
        "id_mismatch",
        "Client Error: Session identifier mismatch",
    )


@pytest.mark.parametrize("state", [S.SIGNALED_ERROR, S.UNAUTHORIZED, S.DISCONNECTING])
def test_violation_after_disconnect_is_only_counted(state: SessionState) -> None:
    session, client = session_in(state)
    assert client.send_raw("{") == []
    assert client.send("nonsense") == []
    assert session.state is state
    assert session.messages_after_end == 2


def test_client_position_is_tracked() -> None:
    session, client = opened_session()
    client.position = 12000
    client.send("ping")
    assert session.client_position_samples == 12000


# --- timeouts ----------------------------------------------------------------------------

FAST = SessionConfig(open_timeout=2.0, idle_timeout=5.0, close_timeout=1.0)


def test_open_timeout() -> None:
    session, _ = make_session(FAST, now=10.0)
    assert session.next_deadline == 12.0
    assert session.tick(11.9) == []
    outputs = session.tick(12.0)
    assert server_messages(outputs)[0]["parameters"] == {"reason": "error", "info": "open timeout"}
    assert session.state is S.SIGNALED_ERROR
    assert session.next_deadline == 13.0
    outputs = session.tick(13.0)
    assert outputs == [CloseConnection(1011, "close timeout"), SessionClosed(None, 0, 0, 0)]
    assert session.is_finished
    assert session.next_deadline is None
    assert session.tick(100.0) == []
    assert session.connection_lost(100.0) == []
    assert session.state is S.DISCONNECTED


def test_open_timeout_while_auth_pending() -> None:
    session, client = make_session(FAST, authenticated=None)
    client.send("open", open_parameters(), now=0.5)
    outputs = session.tick(2.0)
    assert server_messages(outputs)[0]["parameters"]["info"] == "open timeout"


def test_idle_timeout_reset_by_traffic() -> None:
    session, client = opened_session(FAST)
    client.audio(b"\0\0", now=4.0)
    assert session.next_deadline == 9.0
    assert session.tick(8.9) == []
    client.send("ping", now=8.0)
    assert session.tick(12.9) == []
    outputs = session.tick(13.0)
    assert server_messages(outputs)[0]["parameters"] == {"reason": "error", "info": "idle timeout"}
    assert session.state is S.SIGNALED_ERROR


def test_idle_timeout_while_paused() -> None:
    session, _client = session_in(S.PAUSED, FAST)
    assert server_messages(session.tick(5.0))[0]["parameters"]["info"] == "idle timeout"


def test_close_timeout_after_closed() -> None:
    session, client = opened_session(FAST)
    client.send("close", {"reason": "end"}, now=3.0)
    assert session.next_deadline == 4.0
    assert session.tick(3.5) == []
    assert session.tick(4.0) == [CloseConnection(1000, "session closed")]  # SessionClosed earlier
    assert session.is_finished
    assert session.receive_text(client.text("ping"), 4.1) == []


def test_close_timeout_after_server_disconnect() -> None:
    session, client = opened_session(FAST)
    client.audio(b"\0\0", now=0.5)
    session.disconnect("completed", "done", 2.0)
    outputs = session.tick(3.0)
    assert outputs == [CloseConnection(1000, "close timeout"), SessionClosed(None, 1, 2, 1)]
    assert session.receive_bytes(b"\0\0", 3.1) == []


def test_close_timeout_after_violation_uses_protocol_error_code() -> None:
    session, client = opened_session(FAST)
    client.send_raw("{", now=1.0)
    assert session.tick(2.0)[0] == CloseConnection(1002, "close timeout")


def test_close_timeout_after_unauthorized() -> None:
    session, _client = session_in(S.UNAUTHORIZED, FAST)
    assert session.tick(1.0)[0] == CloseConnection(1008, "close timeout")


def test_traffic_after_disconnect_does_not_extend_close_timeout() -> None:
    session, client = opened_session(FAST)
    session.disconnect("completed", None, 1.0)
    client.audio(b"\0\0", now=1.9)
    assert session.next_deadline == 2.0


def test_no_deadline_when_disconnected() -> None:
    session, _ = session_in(S.DISCONNECTED)
    assert session.next_deadline is None
    assert session.tick(1e9) == []


# --- connection loss ---------------------------------------------------------------------


@pytest.mark.parametrize("state", [S.PREPARING, S.ACTIVE, S.PAUSED, S.SIGNALED_ERROR])
def test_connection_lost_without_close(state: SessionState) -> None:
    session, client = session_in(state)
    outputs = session.connection_lost(5.0)
    assert outputs == [SessionClosed(None, 0, 0, 0)]
    assert session.state is S.DISCONNECTED
    assert session.is_finished
    assert session.connection_lost(6.0) == []
    assert session.tick(100.0) == []
    assert client.send("close", {"reason": "end"}) == []


def test_connection_lost_after_closed_reports_once() -> None:
    session, client = opened_session()
    closed = client.send("close", {"reason": "end"})
    assert len(of_type(closed, SessionClosed)) == 1
    assert session.connection_lost(1.0) == []


def test_outputs_are_frozen() -> None:
    text = SendText("{}", "pong")
    with pytest.raises(AttributeError):
        text.text = "[]"  # type: ignore[misc]


def test_an_audio_frame_compares_by_value_and_never_prints_its_audio() -> None:
    frame = AudioFrame(b"x", 0, 1)
    assert frame == AudioFrame(b"x", 0, 1)
    assert frame != AudioFrame(b"x", 1, 1)
    assert (frame.data, frame.sample_offset, frame.sample_count) == (b"x", 0, 1)
    assert "x" not in repr(frame).split("sample_offset")[0].replace("AudioFrame(", "")


def test_send_text_is_valid_json_in_seq_order() -> None:
    session, client = opened_session()
    texts: list[SendText] = []
    texts += of_type(client.send("ping"), SendText)
    texts += of_type(session.pause(1.0), SendText)
    texts += of_type(session.send_event([{"type": "t", "data": None}], 1.0), SendText)
    texts += of_type(client.send("close", {"reason": "end"}), SendText)
    assert [orjson.loads(t.text)["seq"] for t in texts] == [2, 3, 4, 5]
    assert [t.message_type for t in texts] == ["pong", "pause", "event", "closed"]
