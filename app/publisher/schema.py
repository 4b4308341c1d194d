"""What the publisher writes to Redis: the stream and event schema, shared by the publisher
and its readers (app/tools/consume.py, the transcriber).

Streams (key names in app/redis/keys.py):

* Session stream `audiohook:{<sessionId>}:audio`: every entry of one session in order, with
  explicit ids `1-0`, `2-0`, ... (a gap means entries were trimmed). Audio entries have fields
  `offset` (sample offset of the frame's first sample on the session timeline), `samples`
  (samples per channel) and `audio` (the frame as received: interleaved in the channel order
  of the selected media). Encrypted sessions add `kid` (key id) and `nonce`, and `audio` is
  the AES-256-GCM ciphertext with its tag (see payload_crypto). Event entries (same fields as
  in the events stream below) mark the session's lifecycle inline; the last entry is the
  `closed` event. A retried write never duplicates an entry: Redis refuses a repeated id.
* Events stream `audiohook:events`: lifecycle events of all sessions, for discovery with a
  consumer group. At-least-once: after a Redis failure an event may appear twice; `session_id`
  + `seq` identify it. A session's `closed` is only written after all its audio is in Redis.

Event entry schema (version "1"); every value is a string, `data` is a JSON object:

    schema           "1"
    type             opened | paused | resumed | discarded | language_updated | client_error
                     | closing | closed (the transport may add other types; consumers ignore
                     unknown ones)
    session_id, correlation_id, conversation_id, organization_id, integration
    probe            "1" for a connection probe (only published when publish_probe_events)
    seq              per-session event number, 1, 2, ...
    time             wall-clock time at the gateway, ISO 8601 UTC
    data             JSON: the fields given by the transport, plus
                     opened: "mode" (monitor | transcription: see the close window),
                             "media" ({"format", "rate", "channels"} or null), "stream" (the
                             session stream key or null), "encryption_key_id"
                     closing: "reason", "position" (the client sent `close` and the close
                             window opened: all audio is before it; send final events,
                             then the `finish` command)
                     closed: "reason", "counts" (from the transport), "frames_lost",
                             "last_entry" (id of this closed entry in the session stream)

Probes (null conversationId) never get a session stream and their audio is not written; they
are counted by the transport (metric audiohook_probes) and their `opened`/`closed` events go to
the events stream only when the setting publish_probe_events is on.
"""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = "1"
EVENT_TYPES: Final = frozenset(
    {
        "opened",
        "paused",
        "resumed",
        "discarded",
        "language_updated",
        "client_error",
        "closing",
        "closed",
    }
)
F_OFFSET: Final = b"offset"
F_SAMPLES: Final = b"samples"
F_AUDIO: Final = b"audio"
F_KID: Final = b"kid"
F_NONCE: Final = b"nonce"
