"""Builders for protocol tests: a scripted client that keeps its own seq/serverseq."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import orjson

from app.protocol.messages import NULL_UUID, encode_client_message
from app.protocol.session import (
    Output,
    SendText,
    ServerSession,
    SessionConfig,
)

T = TypeVar("T")

SESSION_ID = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
ORG_ID = "d7934305-0972-4844-938e-9060eef73d05"
CONVERSATION_ID = "e160e428-53e2-487c-977d-96989bf5c99d"
PARTICIPANT_ID = "4a2e3b61-1b8e-4c4b-9c53-0cbd51d1d1a1"

STEREO = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
STEREO_INVERTED = {
    "type": "audio",
    "format": "PCMU",
    "channels": ["internal", "external"],
    "rate": 8000,
}
MONO_EXTERNAL = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}
MONO_INTERNAL = {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}
L16_STEREO = {"type": "audio", "format": "L16", "channels": ["external", "internal"], "rate": 8000}


def open_parameters(**overrides: Any) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "organizationId": ORG_ID,
        "conversationId": CONVERSATION_ID,
        "participant": {
            "id": PARTICIPANT_ID,
            "ani": "+1-555-555-1234",
            "aniName": "John Doe",
            "dnis": "+1-800-555-6789",
        },
        "media": copy.deepcopy([STEREO, MONO_EXTERNAL, MONO_INTERNAL]),
        "language": "en-US",
    }
    parameters.update(overrides)
    return parameters


def probe_open_parameters() -> dict[str, Any]:
    """What Genesys sends for a connection probe (null ids, empty caller id, null language)."""
    return open_parameters(
        conversationId=NULL_UUID,
        participant={"id": NULL_UUID, "ani": "", "aniName": "", "dnis": ""},
        language=None,
        customConfig={},
    )


def server_messages(outputs: list[Output]) -> list[dict[str, Any]]:
    return [orjson.loads(o.text) for o in outputs if isinstance(o, SendText)]


def sent_types(outputs: list[Output]) -> list[str]:
    return [o.message_type for o in outputs if isinstance(o, SendText)]


def of_type(outputs: list[Output], cls: type[T]) -> list[T]:
    return [o for o in outputs if isinstance(o, cls)]


class Client:
    """A well-behaved AudioHook client driving a ServerSession directly."""

    def __init__(self, session: ServerSession, session_id: str = SESSION_ID) -> None:
        self.session = session
        self.session_id = session_id
        self.seq = 0
        self.serverseq = 0
        self.position = 0

    def text(self, msg_type: str, parameters: dict[str, Any] | None = None, **envelope: Any) -> str:
        """The next message; envelope overrides (seq, serverseq, id, ...) do not advance seq."""
        if "seq" not in envelope:
            self.seq += 1
        message = orjson.loads(
            encode_client_message(
                msg_type,
                self.session_id,
                self.seq,
                self.serverseq,
                self.position,
                {} if parameters is None else parameters,
            )
        )
        message.update(envelope)
        return orjson.dumps(message).decode()

    def send(
        self,
        msg_type: str,
        parameters: dict[str, Any] | None = None,
        now: float = 0.0,
        **envelope: Any,
    ) -> list[Output]:
        outputs = self.session.receive_text(self.text(msg_type, parameters, **envelope), now)
        self.observe(outputs)
        return outputs

    def send_raw(self, text: str, now: float = 0.0) -> list[Output]:
        outputs = self.session.receive_text(text, now)
        self.observe(outputs)
        return outputs

    def audio(self, data: bytes, now: float = 0.0) -> list[Output]:
        return self.session.receive_bytes(data, now)

    def observe(self, outputs: list[Output]) -> None:
        for message in server_messages(outputs):
            self.serverseq = message["seq"]


def make_session(
    config: SessionConfig | None = None,
    *,
    now: float = 0.0,
    organization_header: str | None = ORG_ID,
    authenticated: bool | None = True,
    session_id: str = SESSION_ID,
) -> tuple[ServerSession, Client]:
    session = ServerSession(
        session_id,
        config or SessionConfig(),
        now,
        organization_header=organization_header,
        authenticated=authenticated,
    )
    return session, Client(session, session_id)


def opened_session(
    config: SessionConfig | None = None, **open_overrides: Any
) -> tuple[ServerSession, Client]:
    """A session that has answered `open` with `opened` (state ACTIVE)."""
    session, client = make_session(config)
    outputs = client.send("open", open_parameters(**open_overrides))
    assert sent_types(outputs) == ["opened"], outputs
    return session, client
