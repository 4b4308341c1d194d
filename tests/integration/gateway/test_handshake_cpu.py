"""An accepted call's handshake CPU is counted from its TCP connection on: the HTTP guard
starts the count and hands it to the endpoint, which adds the rest and charges it at the
accept. A gateway in the test's own process (real uvicorn on 127.0.0.1, real Redis, real
WebSocket clients), so that the counts can be looked at."""

from __future__ import annotations

import pytest

from app.transport import http_guard
from app.transport.load_shedding import HandshakeCpu
from tests.integration.gateway.helpers import gateway_in_this_process
from tests.support.raw_client import RawClient


class GuardCount(HandshakeCpu):
    """The count as the HTTP guard begins it, told apart from one the endpoint would begin."""


async def test_the_guard_hands_its_count_to_the_endpoint(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_guard, "HandshakeCpu", GuardCount)
    charged: list[HandshakeCpu] = []
    async with gateway_in_this_process(redis_url) as (gateway, uri):
        charge = gateway.load_shedder.handshake_accepted

        def record(cpu: HandshakeCpu) -> None:
            charged.append(cpu)
            charge(cpu)

        monkeypatch.setattr(gateway.load_shedder, "handshake_accepted", record)
        async with await RawClient.connect(uri) as client:
            await client.open()
            await client.close()
    (count,) = charged
    assert isinstance(count, GuardCount)  # begun at the connection, not at the endpoint
    assert count.seconds > 0.0
