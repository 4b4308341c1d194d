"""On a single Redis server the upgrade's claim writes the session's control registry entry
(app/security/upgrade_claims.py): it names the gateway from the 101 on, a command reaches the
session once it is open, and a connection that ends without opening leaves no entry routing
commands to it."""

from __future__ import annotations

import redis.asyncio

from app.control.plane import APPLIED, UNKNOWN_SESSION, ControlClient
from app.redis import keys
from tests.support.gateway_process import GatewayProcess
from tests.support.raw_client import RawClient
from tests.support.registry import wait_unregistered


async def test_the_entry_names_the_gateway_from_the_upgrade_on(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    control = ControlClient(gateway_redis)
    async with await RawClient.connect(gateway.ws_url) as client:
        session_id = client.session_id
        replica = await gateway_redis.get(keys.session_owner(session_id))
        assert replica is not None, "no registry entry right after the 101"
        assert (await control.request(session_id, "pause")).result == UNKNOWN_SESSION  # not open
        await client.open()
        reply = await control.request(session_id, "pause")
        assert (reply.result, reply.replica) == (APPLIED, replica.decode())
        assert (await client.receive()).type == "pause"  # the server asks the client
        await client.close()
    await wait_unregistered(gateway_redis, session_id)  # the session ended


async def test_a_connection_that_never_opens_leaves_no_entry(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        session_id = client.session_id
        assert await gateway_redis.exists(keys.session_owner(session_id)) == 1
    await wait_unregistered(gateway_redis, session_id)
