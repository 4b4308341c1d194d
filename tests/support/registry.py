"""Waiting for a live session's registry entry, which the upgrade's claim writes (on a single
Redis server) or the control plane in the background once the session is open: before it
lands, a command for the session is answered `unknown_session`."""

from __future__ import annotations

from app.redis import keys
from app.redis.client import RedisClient
from tests.support.waiting import wait_until


async def wait_registered(
    client: RedisClient, session_id: str, replica: str | None = None, timeout: float = 10.0
) -> None:
    """Until `session_id`'s owner key names `replica` (any replica when None)."""
    owner_key = keys.session_owner(session_id)

    async def registered() -> bool:
        owner = await client.get(owner_key)
        return owner is not None and (replica is None or owner == replica.encode())

    where = f" to {replica}" if replica else ""
    await wait_until(registered, f"{session_id} registered{where}", timeout, interval=0.01)


async def wait_unregistered(client: RedisClient, session_id: str, timeout: float = 10.0) -> None:
    """Until `session_id` has no owner key (deleted in the background, as it is written)."""
    owner_key = keys.session_owner(session_id)

    async def gone() -> bool:
        return await client.exists(owner_key) == 0

    await wait_until(gone, f"{session_id}'s registry entry deleted", timeout, interval=0.01)
