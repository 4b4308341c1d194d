"""What a client that should stop sending can cost: counting, within a budget, and rate bounds
on clients that stream faster than real time."""

from __future__ import annotations

import pytest

from app.protocol.session import (
    MAX_MESSAGES_AFTER_END,
    UNAUTHORIZED_INFO,
    AudioFrame,
    CloseConnection,
    ProtocolViolation,
    ServerSession,
    SessionClosed,
    SessionConfig,
    SessionState,
)
from tests.unit.protocol.helpers import (
    ORG_ID,
    SESSION_ID,
    Client,
    open_parameters,
    opened_session,
    sent_types,
    server_messages,
)

S = SessionState
STEREO_FRAME = b"\xff" * 3200  # 200 ms of stereo PCMU


def unauthorized_session(reject_at: float = 0.5) -> tuple[ServerSession, Client]:
    session = ServerSession(
        SESSION_ID, SessionConfig(), 0.0, organization_header=ORG_ID, unauthorized_at=reject_at
    )
    return session, Client(session)


def test_failed_verification_is_answered_at_the_given_time_and_nothing_is_parsed() -> None:
    session, client = unauthorized_session(reject_at=0.5)
    assert client.send("open", open_parameters(), now=0.1) == []  # not even parsed
    assert client.send("ping", now=0.2) == []  # no pong for an unauthenticated client
    assert client.send_raw("{", now=0.2) == []  # no violation reported either
    assert session.next_deadline == 0.5
    assert session.tick(0.4) == []
    outputs = session.tick(0.5)
    assert sent_types(outputs) == ["disconnect"]
    assert server_messages(outputs)[0]["parameters"] == {
        "reason": "unauthorized",
        "info": UNAUTHORIZED_INFO,
    }
    assert session.state is S.UNAUTHORIZED
    assert session.messages_after_end == 3


def test_close_after_unauthorized_is_answered() -> None:
    session, client = unauthorized_session()
    client.observe(session.tick(1.0))
    outputs = client.send("close", {"reason": "disconnect"}, now=1.1)
    assert sent_types(outputs) == ["closed"]


@pytest.mark.parametrize("state", [S.SIGNALED_ERROR, S.UNAUTHORIZED, S.CLOSED, "pending"])
def test_a_client_that_keeps_sending_after_the_end_is_dropped(state: SessionState | str) -> None:
    if state == "pending":
        session, client = unauthorized_session(reject_at=100.0)
    else:
        session, client = opened_session()
        if state is S.SIGNALED_ERROR:
            client.observe(session.disconnect("error", "boom", 0.0))
        elif state is S.UNAUTHORIZED:
            client.observe(session.disconnect("unauthorized", None, 0.0))
        else:
            client.send("close", {"reason": "end"})
    for index in range(MAX_MESSAGES_AFTER_END):
        # Text and binary alike, valid or not: counted, never answered or reported.
        outputs = client.audio(STEREO_FRAME) if index % 2 else client.send_raw("x")
        assert outputs == []
    outputs = client.send_raw("x")
    close = [output for output in outputs if isinstance(output, CloseConnection)]
    assert close == [CloseConnection(1008, "too many messages after the session ended", abort=True)]
    assert session.is_finished
    assert session.messages_after_end == MAX_MESSAGES_AFTER_END + 1
    # Anything later is not even counted: the connection is being dropped.
    assert client.send_raw("x") == []
    assert client.audio(STEREO_FRAME) == []


def test_the_budget_closes_a_pending_session_only_once_with_a_closed_report() -> None:
    session, client = unauthorized_session(reject_at=100.0)
    outputs = []
    for _ in range(MAX_MESSAGES_AFTER_END + 1):
        outputs += client.send_raw("x")
    assert [type(output) for output in outputs] == [CloseConnection, SessionClosed]
    assert session.tick(100.0) == []  # no `disconnect` once the socket is being closed


def test_audio_in_flight_after_disconnect_completed_is_kept_not_counted() -> None:
    session, client = opened_session()
    client.observe(session.disconnect("completed", None, 0.0))
    for _ in range(MAX_MESSAGES_AFTER_END + 10):
        assert [type(output) for output in client.audio(STEREO_FRAME)] == [AudioFrame]
    assert session.messages_after_end == 0


def test_audio_faster_than_the_bound_ends_the_session() -> None:
    config = SessionConfig(max_audio_speed=2.0, audio_burst_seconds=1.0)
    session, client = opened_session(config)
    # 200 ms frames: the burst (1 s) plus 2x real time over 1 s allows 3 s, i.e. 15 frames.
    for _ in range(15):
        assert [type(output) for output in client.audio(STEREO_FRAME, now=1.0)] == [AudioFrame]
    outputs = client.audio(STEREO_FRAME, now=1.0)
    violations = [output for output in outputs if isinstance(output, ProtocolViolation)]
    assert [violation.kind for violation in violations] == ["rate_exceeded"]
    assert server_messages(outputs)[0]["parameters"] == {
        "reason": "error",
        "info": "Client Error: Audio sent faster than real time",
    }
    assert session.state is S.SIGNALED_ERROR
    assert session.frames_received == 15  # the refused frame is counted as dropped


def test_real_time_audio_never_meets_the_bound() -> None:
    config = SessionConfig(max_audio_speed=1.5, audio_burst_seconds=0.0)
    _session, client = opened_session(config)
    for frame in range(3000):  # ten minutes of 200 ms frames, each sent when it is due
        assert [type(output) for output in client.audio(STEREO_FRAME, now=(frame + 1) * 0.2)] == [
            AudioFrame
        ]


def test_too_many_messages_end_the_session() -> None:
    config = SessionConfig(max_messages_per_second=10.0, message_burst=5)
    session, client = opened_session(config)  # `open` was message 1
    for _ in range(14):  # 5 + 10 x 1 s = 15 messages allowed by t = 1 s
        assert sent_types(client.send("ping", now=1.0)) == ["pong"]
    outputs = client.send("ping", now=1.0)
    assert sent_types(outputs) == ["disconnect"]
    assert server_messages(outputs)[0]["parameters"]["info"] == "Client Error: Too many messages"
    assert session.state is S.SIGNALED_ERROR


def test_zero_turns_the_rate_bounds_off() -> None:
    config = SessionConfig(max_audio_speed=0.0, max_messages_per_second=0.0, message_burst=0)
    _session, client = opened_session(config)
    for _ in range(1000):
        assert [type(output) for output in client.audio(STEREO_FRAME)] == [AudioFrame]
