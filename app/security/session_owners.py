"""Which integration a session id belongs to, across replicas and after the session ended.

A session's streams are keyed by its id alone, so a second integration reusing an id would
append to the first one's stream and events. The first authenticated upgrade records its
integration under the session's hash tag; an upgrade of another integration with that id is
refused, while the same integration reconnecting with the same id proceeds as before.
"""

from __future__ import annotations

import redis.exceptions

from app.redis import keys
from app.redis.client import RedisClient
from app.security.nonces import NonceStoreUnavailable

# Outlives the session's streams: they expire stream_ttl after the session ends, and a call
# may last this long before that.
LONGEST_CALL_SECONDS = 86_400

# KEYS[1] owner key; ARGV[1] integration name, ARGV[2] TTL. 1: this integration owns the id.
CLAIM_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if (not owner) or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


class SessionOwners:
    def __init__(self, client: RedisClient, stream_ttl_seconds: int) -> None:
        self._script = client.register_script(CLAIM_SCRIPT)
        self.ttl_seconds = stream_ttl_seconds + LONGEST_CALL_SECONDS

    async def claim(self, session_id: str, integration: str) -> bool:
        """True when `integration` owns `session_id` (now or already); False when another
        integration does. Raises NonceStoreUnavailable when Redis cannot be asked."""
        try:
            owned = await self._script(
                keys=[keys.session_integration(session_id)], args=[integration, self.ttl_seconds]
            )
        except (redis.exceptions.RedisError, OSError) as exc:
            raise NonceStoreUnavailable("session owner store unavailable") from exc
        return bool(owned == 1)
