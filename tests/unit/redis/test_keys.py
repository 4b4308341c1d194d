"""Key layout: one session's keys share a Redis Cluster slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from app.redis import keys


def test_session_keys_are_hash_tagged_to_one_slot() -> None:
    session_id = "e160e428-53e2-487c-977d-96989bf5c99d"
    assert keys.audio_stream(session_id) == f"audiohook:{{{session_id}}}:audio"
    assert keys.session_owner(session_id) == f"audiohook:{{{session_id}}}:owner"
    slots = {key_slot(k.encode()) for k in (keys.audio_stream(session_id),
                                           keys.session_owner(session_id))}  # fmt: skip
    assert slots == {key_slot(session_id.encode())}


def test_fixed_keys() -> None:
    assert keys.EVENTS_STREAM == "audiohook:events"
    assert keys.CONTROL_REPLIES_STREAM == "audiohook:control:replies"
    assert keys.control_inbox("pod-1") == "audiohook:control:inbox:{pod-1}"
    assert keys.control_reply("c1") == "audiohook:control:reply:{c1}"
    assert keys.IP_RANGES_CACHE == "audiohook:ip-ranges"
    assert keys.nonce_key("abc") == "audiohook:nonce:abc"


@pytest.mark.parametrize("bad", ["a}b", "{x", "}"])
def test_braces_that_would_break_the_hash_tag_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        keys.audio_stream(bad)
    with pytest.raises(ValueError):
        keys.control_inbox(bad)
