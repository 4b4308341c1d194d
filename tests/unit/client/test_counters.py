"""The client's message counters: seq counted per message, serverseq and position as kept."""

from __future__ import annotations

import json

from app.client.counters import ClientCounters


def test_messages_are_numbered_with_the_last_server_seq_and_the_position() -> None:
    counters = ClientCounters("a-session")
    first = json.loads(counters.message("open", {"x": 1}))
    counters.server_seq = 1
    counters.position = 8000
    second = json.loads(counters.message("ping", {}))
    assert (first["id"], first["type"], first["seq"], first["serverseq"]) == (
        "a-session",
        "open",
        1,
        0,
    )
    assert (first["position"], first["parameters"]) == ("PT0S", {"x": 1})
    assert (second["seq"], second["serverseq"], second["position"]) == (2, 1, "PT1S")
    assert counters.seq == 2


def test_an_explicit_seq_is_written_as_given_and_does_not_move_the_count() -> None:
    counters = ClientCounters("a-session")
    counters.message("open", {})
    assert json.loads(counters.message("ping", {}, seq=7))["seq"] == 7
    assert counters.seq == 1
    assert json.loads(counters.message("ping", {}))["seq"] == 2
