"""What an AudioHook client counts to number its messages (docs/protocol.md §3): its own
`seq`, the last server `seq` it received (sent back as `serverseq`) and its `position`, the
samples per channel of audio on its timeline. The client session, and the test drivers that
speak AudioHook message by message, keep these here instead of a copy each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.protocol.messages import encode_client_message


class ClientCounters:
    """`seq` of the last client message, `server_seq` of the last server message received,
    `position` in samples per channel; `message()` numbers and encodes the next message."""

    __slots__ = ("position", "seq", "server_seq", "session_id")

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.seq = 0
        self.server_seq = 0
        self.position = 0

    def message(
        self, msg_type: str, parameters: Mapping[str, Any], *, seq: int | None = None
    ) -> str:
        """The next client message: seq one more than the last (or `seq` as given, which
        does not move the count), the last server seq and the position."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        return encode_client_message(
            msg_type, self.session_id, seq, self.server_seq, self.position, parameters
        )
