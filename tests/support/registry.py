"""Waiting for a live session's registry entry, which the control plane writes in the
background once the session is open: before it lands, a command for the session is answered
`unknown_session`."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio

from app.redis import keys


async def wait_registered(
    client: redis.asyncio.Redis, session_id: str, replica: str | None = None
) -> None:
    """Until `session_id`'s owner key names `replica` (any replica when None), at most 5 s."""
    deadline = time.monotonic() + 5
    while True:
        owner = await client.get(keys.session_owner(session_id))
        if owner is not None and (replica is None or owner == replica.encode()):
            return
        assert time.monotonic() < deadline, "registry entry not written"
        await asyncio.sleep(0.01)
