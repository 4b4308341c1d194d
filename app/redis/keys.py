"""Every Redis key the gateway uses, and nothing else names them.

Keys of one session carry the hash tag `{<sessionId>}`, so on Redis Cluster they share a slot;
a replica's inbox carries `{<replicaId>}`. Consumer authors: this is the layout to read.

| key                                   | type   | content                                         |
|---------------------------------------|--------|-------------------------------------------------|
| audiohook:events                      | stream | lifecycle events of all sessions (schema in     |
|                                       |        | app/publisher/schema.py)                        |
| audiohook:{<sessionId>}:audio         | stream | one entry per audio frame, id `<n>-0`, n = 1, 2 |
| audiohook:{<sessionId>}:owner         | string | replica id holding the live session (TTL)       |
| audiohook:{<sessionId>}:integration   | string | integration the session id belongs to (TTL)     |
| audiohook:control:inbox:{<replicaId>} | stream | commands for the sessions of one replica        |
| audiohook:control:replies             | stream | every command's result (audit record)           |
| audiohook:control:reply:{<commandId>} | list   | the one reply a waiting sender pops (TTL)       |
| audiohook:ip-ranges                   | string | last good Genesys IP-range list (JSON)          |
| audiohook:nonce:<nonce>               | string | token of the request that used this nonce (TTL) |
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "audiohook"

# Fixed keys are constants; keys that carry an identifier are functions below.
EVENTS_STREAM: Final = f"{PREFIX}:events"
CONTROL_REPLIES_STREAM: Final = f"{PREFIX}:control:replies"
IP_RANGES_CACHE: Final = f"{PREFIX}:ip-ranges"


def _tag(value: str) -> str:
    # A brace inside a hash tag would end it early and split a session over slots.
    if "{" in value or "}" in value:
        raise ValueError("identifier must not contain braces")
    return "{" + value + "}"


def audio_stream(session_id: str) -> str:
    return f"{PREFIX}:{_tag(session_id)}:audio"


def session_owner(session_id: str) -> str:
    return f"{PREFIX}:{_tag(session_id)}:owner"


def session_integration(session_id: str) -> str:
    return f"{PREFIX}:{_tag(session_id)}:integration"


def control_inbox(replica_id: str) -> str:
    return f"{PREFIX}:control:inbox:{_tag(replica_id)}"


def control_reply(command_id: str) -> str:
    return f"{PREFIX}:control:reply:{_tag(command_id)}"


def nonce_key(nonce: str) -> str:
    return f"{PREFIX}:nonce:{nonce}"
