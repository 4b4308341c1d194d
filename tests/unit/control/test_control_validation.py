"""Command parameter validation on the gateway side (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from app.control.plane import ControlCommand, ControlReply, validate

ENTITY = {"type": "transcript", "data": {"id": "x"}}


@pytest.mark.parametrize(
    ("command", "params"),
    [
        ("pause", {}),
        ("resume", {}),
        ("finish", {}),
        ("disconnect", {}),
        ("disconnect", {"reason": "error", "info": "consumer failed"}),
        ("event", {"entities": [ENTITY, {"type": "agentassist", "data": {}}]}),
    ],
)
def test_valid(command: str, params: dict[str, Any]) -> None:
    assert validate(command, params) is None


@pytest.mark.parametrize(
    ("command", "params"),
    [
        ("reconnect", {}),
        ("pause", {"x": 1}),
        ("finish", {"reason": "end"}),
        ("disconnect", {"reason": "bored"}),
        ("disconnect", {"info": 5}),
        ("disconnect", {"info": "x" * 1001}),
        ("disconnect", {"extra": 1}),
        ("event", {}),
        ("event", {"entities": []}),
        ("event", {"entities": "x"}),
        ("event", {"entities": [{"type": "", "data": {}}]}),
        ("event", {"entities": [{"type": "transcript", "data": []}]}),
        ("event", {"entities": [ENTITY], "more": 1}),
    ],
)
def test_invalid(command: str, params: dict[str, Any]) -> None:
    assert validate(command, params)


def test_command_accessors_and_reply_json() -> None:
    command = ControlCommand("c", "s", "disconnect", {"info": "bye"})
    assert (command.reason, command.info, command.entities) == ("completed", "bye", [])
    assert ControlCommand("c", "s", "disconnect", {"reason": "error"}).reason == "error"
    with pytest.raises(ValueError, match="not a disconnect reason"):
        _ = ControlCommand("c", "s", "disconnect", {"reason": "because"}).reason
    reply = ControlReply("c", "s", "pause", "applied", "r1", None, "2024-01-01T00:00:00.000+00:00")
    assert ControlReply.from_json(reply.to_json()) == reply
