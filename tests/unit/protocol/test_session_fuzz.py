"""Random client/server interleavings never crash the session and keep its invariants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.protocol.media import MediaPolicy
from app.protocol.messages import NULL_UUID, format_duration
from app.protocol.session import (
    AudioFrame,
    CloseConnection,
    InvalidStateError,
    Output,
    SendText,
    ServerSession,
    SessionClosed,
    SessionConfig,
    SessionState,
)
from tests.unit.protocol.helpers import (
    L16_STEREO,
    MONO_INTERNAL,
    ORG_ID,
    SESSION_ID,
    STEREO_INVERTED,
    open_parameters,
    probe_open_parameters,
)

OTHER_ID = "9f3c1c7e-2a4b-4c5d-8e6f-0a1b2c3d4e5f"
CONFIG_TIMEOUTS = {"open_timeout": 5.0, "idle_timeout": 10.0, "close_timeout": 3.0}

VALID_PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "open": [
        open_parameters(),
        open_parameters(media=[]),
        open_parameters(media=[L16_STEREO]),
        open_parameters(media=[MONO_INTERNAL, STEREO_INVERTED], supportedLanguages=True),
        probe_open_parameters(),
    ],
    "close": [{"reason": r} for r in ("end", "error", "disconnect", "reconnect")],
    "ping": [{}, {"rtt": "PT0.1S"}],
    "paused": [{}],
    "resumed": [{"start": "PT1S", "discarded": "PT2.5S"}, {"start": "PT0S", "discarded": "PT0S"}],
    "update": [{"language": "de-DE"}],
    "discarded": [{"start": "PT0.2S", "discarded": "PT0.3S"}],
    "error": [{"code": 500, "message": "x"}, {"code": 429, "message": "y", "retryAfter": "PT1S"}],
    "dtmf": [{"digit": "1"}],  # unknown type
}
INVALID_PARAMETERS = {
    "rtt": 5,
    "language": 5,
    "reason": 5,
    "start": 5,
    "discarded": 5,
    "code": "x",
    "organizationId": 5,
}

MESSAGE_TYPES = (
    ["ping", "paused", "resumed"] * 3 + ["update", "discarded", "error", "close"] * 2 + ["open"]
)
text_frames = st.tuples(
    st.just("text"),
    st.sampled_from([*MESSAGE_TYPES * 2, "dtmf"]),
    st.integers(0, 4),  # which valid parameter set
    st.sampled_from(["valid"] * 30 + ["invalid"]),
    st.sampled_from(["next"] * 40 + ["repeat", "skip", "zero"]),
    st.sampled_from(["ok"] * 40 + ["ahead", "zero"]),
    st.sampled_from(["ok"] * 60 + ["other", "bad", "version", "position", "oversize", "notjson"]),
)
junk_frames = st.tuples(st.just("junk"), st.text(max_size=30))
binary_frames = st.tuples(
    st.just("bytes"),
    st.one_of(
        *[st.sampled_from([0, 160, 1600, 3200, 6400])] * 12,
        st.integers(0, 8),
        st.sampled_from([3201, 65536, 65537]),
    ),
)
ticks = st.tuples(st.just("tick"), st.floats(0.0, 12.0, allow_nan=False))
server_actions = st.tuples(
    st.just("server"),
    st.sampled_from(
        ["pause", "resume", "event", "auth_ok"] * 4
        + [
            "disconnect_completed",
            "disconnect_error",
            "disconnect_unauthorized",
            "reconnect",
            "auth_fail",
            "lost",
        ]
    ),
)
actions = st.lists(
    st.one_of(
        *[text_frames] * 8, *[binary_frames] * 8, *[ticks] * 2, *[server_actions] * 3, junk_frames
    ),
    max_size=40,
)
setups = st.tuples(
    st.sampled_from([True, True, None]),  # authenticated
    st.sampled_from([ORG_ID] * 6 + [OTHER_ID, None]),  # organization header
    st.sampled_from([MediaPolicy(), MediaPolicy(formats=("PCMU",), prefer="mono")]),
    st.booleans(),  # start paused
    st.sampled_from([SESSION_ID] * 4 + [NULL_UUID]),
    st.sampled_from([True] * 4 + [False]),  # begin with a valid `open`
)
OPEN_FIRST = ("text", "open", 0, "valid", "next", "ok", "ok")


@dataclass
class Invariants:
    session: ServerSession
    server_seq: int = 0
    expected_clientseq: int = 0
    closed_sent: bool = False
    socket_done: bool = False
    session_closed: int = 0
    frames: int = 0
    violations: list[str] = field(default_factory=list)

    def check(self, outputs: list[Output], state_before: SessionState, pos_before: int) -> None:
        session = self.session
        for output in outputs:
            if isinstance(output, SendText):
                assert not self.closed_sent, "message after closed"
                assert not self.socket_done, "message after the socket is gone"
                message = orjson.loads(output.text)
                assert message["version"] == "2"
                assert message["type"] == output.message_type
                assert message["id"] == session.session_id
                assert message["seq"] == self.server_seq + 1, "server seq gap"
                assert message["clientseq"] == self.expected_clientseq
                assert isinstance(message["parameters"], dict)
                self.server_seq = message["seq"]
                self.closed_sent = self.closed_sent or message["type"] == "closed"
            elif isinstance(output, AudioFrame):
                assert state_before in (SessionState.ACTIVE, SessionState.DISCONNECTING)
                assert output.sample_offset == pos_before
                assert session.position_samples == pos_before + output.sample_count
                self.frames += 1
            elif isinstance(output, SessionClosed):
                self.session_closed += 1
                assert self.session_closed == 1, "SessionClosed twice"
                assert output.frames == self.frames
            elif isinstance(output, CloseConnection):
                assert not self.socket_done
                self.socket_done = True
        assert session.position_samples >= pos_before, "position went backwards"
        assert session.frames_received == self.frames
        assert session.server_seq == self.server_seq


def build_text(spec: tuple[Any, ...], inv: Invariants, client_id: str) -> tuple[str, bool]:
    """The frame's text and whether its envelope is well-formed (so it moves the seq)."""
    _, msg_type, choice, validity, seq_mode, serverseq_mode, envelope_mode = spec
    options = VALID_PARAMETERS[msg_type]
    parameters = options[choice % len(options)] if validity == "valid" else INVALID_PARAMETERS
    seq = {
        "next": inv.expected_clientseq + 1,
        "repeat": inv.expected_clientseq,
        "skip": inv.expected_clientseq + 2,
        "zero": 0,
    }[seq_mode]
    serverseq = {"ok": inv.server_seq, "ahead": inv.server_seq + 1, "zero": 0}[serverseq_mode]
    message: dict[str, Any] = {
        "version": "2",
        "type": msg_type,
        "id": client_id,
        "seq": seq,
        "serverseq": serverseq,
        "position": format_duration(inv.session.position_samples),
        "parameters": parameters,
    }
    well_formed = True
    if envelope_mode == "other":
        message["id"] = OTHER_ID
    elif envelope_mode == "bad":
        message["id"] = "not-a-uuid"
        well_formed = False
    elif envelope_mode == "version":
        message["version"] = 2
        well_formed = False
    elif envelope_mode == "position":
        message["position"] = "PT1M"
        well_formed = False
    elif envelope_mode == "oversize":
        message["parameters"] = {**parameters, "pad": "x" * 65536}
        well_formed = False
    text = orjson.dumps(message).decode()
    if envelope_mode == "notjson":
        text, well_formed = text[:-1], False
    if well_formed:
        inv.expected_clientseq = seq
    return text, well_formed


def server_action(session: ServerSession, name: str, now: float) -> list[Output]:
    try:
        match name:
            case "pause":
                return session.pause(now)
            case "resume":
                return session.resume(now)
            case "disconnect_completed":
                return session.disconnect("completed", None, now)
            case "disconnect_error":
                return session.disconnect("error", "server error", now)
            case "disconnect_unauthorized":
                return session.disconnect("unauthorized", None, now)
            case "reconnect":
                return session.reconnect("drain", now)
            case "event":
                return session.send_event([{"type": "transcript", "data": {"n": 1}}], now)
            case "auth_ok":
                return session.complete_authentication(True, now)
            case "auth_fail":
                return session.complete_authentication(False, now)
            case _:
                return session.connection_lost(now)
    except InvalidStateError:
        return []


VALID_SIZES = (0, 160, 1600, 3200, 6400)


def tame(step: tuple[Any, ...], session: ServerSession) -> tuple[Any, ...] | None:
    """The step as a well-behaved client would do it (None: skip it)."""
    if step[0] == "junk":
        return None
    if step[0] == "bytes" and session.state not in (
        SessionState.ACTIVE,
        SessionState.DISCONNECTING,
    ):
        return None  # a good client sends audio only while streaming
    if step[0] == "tick":
        return ("tick", min(step[1], 4.0))  # a good client keeps pinging
    if step[0] == "text":
        msg_type = "ping" if step[1] == "dtmf" else step[1]
        return ("text", msg_type, step[2], "valid", "next", "ok", "ok")
    if step[0] == "bytes":
        return ("bytes", VALID_SIZES[step[1] % len(VALID_SIZES)])
    return step


def run_session(
    setup: tuple[Any, ...], steps: list[tuple[Any, ...]], *, well_behaved: bool
) -> None:
    authenticated, org_header, policy, start_paused, session_id, open_first = setup
    if well_behaved:
        org_header, open_first = ORG_ID, True
    config = SessionConfig(media_policy=policy, start_paused=start_paused, **CONFIG_TIMEOUTS)
    now = 100.0
    session = ServerSession(
        session_id, config, now, organization_header=org_header, authenticated=authenticated
    )
    inv = Invariants(session)
    for raw_step in [OPEN_FIRST, *steps] if open_first else steps:
        step = tame(raw_step, session) if well_behaved else raw_step
        if step is None:
            continue
        now += 0.01
        state_before = session.state
        pos_before = session.position_samples
        finished_before = session.is_finished
        kind = step[0]
        if kind == "text":
            text, well_formed = build_text(step, inv, SESSION_ID)
            outputs = session.receive_text(text, now)
            if not finished_before and well_formed:
                assert session.client_seq == inv.expected_clientseq
        elif kind == "junk":
            outputs = session.receive_text(step[1], now)
        elif kind == "bytes":
            outputs = session.receive_bytes(b"\x7f" * step[1], now)
        elif kind == "tick":
            now += step[1]
            deadline = session.next_deadline
            outputs = session.tick(now)
            if deadline is None or now < deadline:
                assert outputs == [], "tick acted before next_deadline"
        else:
            outputs = server_action(session, step[1], now)
        if finished_before:
            assert not any(isinstance(o, SendText | AudioFrame) for o in outputs)
        inv.check(outputs, state_before, pos_before)
        assert isinstance(session.state, SessionState)

    event(f"final state {session.state}")
    event(f"frames > 0: {inv.frames > 0}; closed sent: {inv.closed_sent}")
    outputs = session.connection_lost(now + 1)
    inv.check(outputs, session.state, session.position_samples)
    assert inv.session_closed == 1
    assert session.is_finished
    assert session.next_deadline is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups, steps=actions)
def test_session_survives_random_input(
    setup: tuple[Any, ...], steps: list[tuple[Any, ...]]
) -> None:
    run_session(setup, steps, well_behaved=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups, steps=actions)
def test_session_with_well_formed_client_messages(
    setup: tuple[Any, ...], steps: list[tuple[Any, ...]]
) -> None:
    """Valid messages and frames in random order, with random server actions and time."""
    run_session(setup, steps, well_behaved=True)
