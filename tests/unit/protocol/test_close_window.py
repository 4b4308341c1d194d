"""The close window (docs/protocol.md §4.6): `closed` waits, bounded, for the consumer's
`finish`, so that final transcripts reach the client first."""

from __future__ import annotations

from typing import Any

import pytest

from app.protocol.session import (
    CloseConnection,
    CloseRequested,
    CloseWindowEnded,
    InvalidStateError,
    ProtocolViolation,
    SessionClosed,
    SessionConfig,
    SessionState,
)
from tests.unit.protocol.helpers import (
    Client,
    of_type,
    opened_session,
    sent_types,
    server_messages,
)
from tests.unit.protocol.test_session import session_in

S = SessionState
WINDOW = SessionConfig(close_window=3.0, idle_timeout=1.0, close_timeout=1.0)
TRANSCRIPT = {"type": "transcript", "data": {"id": "x"}}


def closing_session(now: float = 10.0) -> tuple[Any, Client, list[Any]]:
    session, client = opened_session(WINDOW)
    client.audio(b"\xff\xff" * 800, now=now - 0.1)  # 800 stereo PCMU samples
    outputs = client.send("close", {"reason": "end"}, now=now)
    return session, client, outputs


def test_close_opens_the_window_instead_of_answering() -> None:
    session, _client, outputs = closing_session()
    assert outputs == [CloseRequested("end", 800)]
    assert session.state is S.CLOSING
    assert session.in_close_window
    assert session.next_deadline == 13.0  # the window's bound, not the idle timeout


def test_events_then_finish_then_closed() -> None:
    session, client, _ = closing_session()
    client.observe(session.send_event([TRANSCRIPT], 11.0))
    outputs = session.finish(11.5)
    client.observe(outputs)
    [closed] = server_messages(outputs)
    assert closed["type"] == "closed"
    assert closed["clientseq"] == client.seq  # the `close` it answers
    assert closed["seq"] == 3  # opened, event, closed: no gap
    assert of_type(outputs, CloseWindowEnded) == [CloseWindowEnded("finished", 1.5)]
    assert of_type(outputs, SessionClosed)[0].reason == "end"
    assert session.state is S.CLOSED
    with pytest.raises(InvalidStateError):
        session.send_event([TRANSCRIPT], 11.6)  # nothing after `closed`


def test_window_expires_at_its_bound() -> None:
    session, _client, _ = closing_session()
    assert session.tick(12.99) == []
    outputs = session.tick(13.0)
    assert sent_types(outputs) == ["closed"]
    assert of_type(outputs, CloseWindowEnded) == [CloseWindowEnded("expired", 3.0)]
    # then the usual close timeout applies
    assert session.next_deadline == 14.0
    assert session.tick(14.0)[0] == CloseConnection(1000, "session closed")


def test_ping_is_answered_and_close_repeats_are_ignored_in_the_window() -> None:
    session, client, _ = closing_session()
    assert sent_types(client.send("ping", now=11.0)) == ["pong"]
    assert client.send("close", {"reason": "end"}, now=11.1) == []
    assert session.state is S.CLOSING
    # audio after `close` is only counted; the window is not extended by traffic
    assert client.audio(b"\xff\xff", now=11.2) == []
    assert session.next_deadline == 13.0


def test_audio_in_the_window_is_dropped_and_counted() -> None:
    session, client, _ = closing_session()
    client.audio(b"\xff\xff", now=11.0)
    outputs = session.finish(11.5)
    assert of_type(outputs, SessionClosed)[0].frames_dropped == 1


def test_violation_in_the_window_is_only_reported() -> None:
    session, client, _ = closing_session()
    outputs = client.send_raw("{", now=11.0)
    assert len(outputs) == 1
    assert isinstance(outputs[0], ProtocolViolation)
    assert session.in_close_window


def test_server_actions_other_than_event_are_refused_in_the_window() -> None:
    session, _client, _ = closing_session()
    for action in (session.pause, session.resume):
        with pytest.raises(InvalidStateError):
            action(11.0)
    with pytest.raises(InvalidStateError):
        session.disconnect("completed", None, 11.0)


def test_drain_ends_the_window_at_once() -> None:
    session, _client, _ = closing_session()
    outputs = session.finish(10.5, outcome="drained")
    assert sent_types(outputs) == ["closed"]
    assert of_type(outputs, CloseWindowEnded) == [CloseWindowEnded("drained", 0.5)]


def test_socket_gone_in_the_window_keeps_the_close_reason() -> None:
    session, _client, _ = closing_session()
    outputs = session.connection_lost(11.0)
    assert outputs == [CloseWindowEnded("dropped", 1.0), SessionClosed("end", 1, 1600, 800)]
    assert session.next_deadline is None


def test_finish_without_a_window_is_refused() -> None:
    session, client = opened_session(WINDOW)
    with pytest.raises(InvalidStateError):
        session.finish(1.0)  # still streaming
    client.send("close", {"reason": "end"}, now=2.0)
    session.finish(2.1)
    with pytest.raises(InvalidStateError):
        session.finish(2.2)  # already closed


def test_monitor_sessions_answer_close_at_once() -> None:
    session, client = opened_session(SessionConfig())
    outputs = client.send("close", {"reason": "end"}, now=1.0)
    assert sent_types(outputs) == ["closed"]
    assert not of_type(outputs, CloseRequested)
    assert session.state is S.CLOSED


@pytest.mark.parametrize("state", [S.PREPARING, S.OPENING])
def test_close_before_opened_is_answered_at_once(state: SessionState) -> None:
    session, client = session_in(state, WINDOW)
    outputs = client.send("close", {"reason": "end"}, now=1.0)
    assert sent_types(outputs) == ["closed"]
    assert session.state is S.CLOSED


def test_close_after_server_disconnect_is_answered_at_once() -> None:
    session, client = opened_session(WINDOW)
    client.observe(session.disconnect("completed", None, 1.0))
    assert sent_types(client.send("close", {"reason": "disconnect"}, now=1.1)) == ["closed"]


def test_window_bound_is_checked() -> None:
    with pytest.raises(ValueError, match="close_window"):
        SessionConfig(close_window=9.5)
    with pytest.raises(ValueError, match="close_window"):
        SessionConfig(close_window=-1)
