"""Issue 16: the close window over the real gateway (docs/protocol.md §4.6).

An integration in `transcription` mode publishes the client's `close` as a `closing` event and
answers `closed` only when a consumer says `finish` over the control plane (after its final
transcripts), or when the window's bound runs out; a Monitor integration answers at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from app.control.plane import APPLIED, INVALID_STATE, UNKNOWN_SESSION, ControlClient
from app.redis.embedded import EmbeddedRedis
from tests.integration.gateway.helpers import INTEGRATIONS, events_of, running_gateway, secret
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import Growth, scrape, wait_for_metric
from tests.support.raw_client import RawClient
from tests.support.redis_servers import redis_outage
from tests.support.registry import wait_registered

WINDOW = 2.0
TRANSCRIBING_KEY = "transcribing-key"
TRANSCRIBING_SECRET = secret("transcribing")
LANGUAGES = ["en-US", "de-DE"]
TRANSCRIBING: dict[str, object] = {
    "name": "transcribing",
    "api_key": TRANSCRIBING_KEY,
    "client_secrets": [TRANSCRIBING_SECRET],
    "mode": "transcription",
    "close_window_seconds": WINDOW,
    "supported_languages": LANGUAGES,
}
FRAME = b"\xff" * 1600  # 100 ms of stereo PCMU silence


def transcript(text: str, offset: str) -> dict[str, Any]:
    return {
        "type": "transcript",
        "data": {
            "id": "9a1f8d1c-4c5e-4bb2-9a43-3b8f3f1f2a10",
            "channelId": 0,
            "isFinal": True,
            "offset": offset,
            "duration": "PT0.5S",
            "alternatives": [
                {"confidence": 0.9, "interpretations": [{"type": "display", "transcript": text}]}
            ],
        },
    }


def display_text(entity: dict[str, Any]) -> str:
    return str(entity["data"]["alternatives"][0]["interpretations"][0]["transcript"])


@pytest.fixture(scope="module")
def window_gateway(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with running_gateway(
        redis_server,
        tmp_path_factory.mktemp("close-window"),
        integrations=[*INTEGRATIONS, TRANSCRIBING],
    ) as process:
        yield process


async def connect_transcribing(gateway: GatewayProcess) -> RawClient:
    return await RawClient.connect(
        gateway.ws_url, api_key=TRANSCRIBING_KEY, client_secret=TRANSCRIBING_SECRET
    )


async def wait_for_event(
    client: redis.asyncio.Redis, session_id: str, event_type: bytes, timeout: float = 5.0
) -> dict[bytes, bytes]:
    deadline = time.monotonic() + timeout
    while True:
        for fields in await events_of(client, session_id):
            if fields[b"type"] == event_type:
                return fields
        assert time.monotonic() < deadline, f"no {event_type!r} event for {session_id}"
        await asyncio.sleep(0.02)


async def test_final_transcripts_reach_the_client_before_closed(
    window_gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    before = await scrape(window_gateway)
    control = ControlClient(gateway_redis)
    async with await connect_transcribing(window_gateway) as client:
        opened = await client.open(supportedLanguages=True)
        assert opened.parameters["supportedLanguages"] == LANGUAGES  # the integration's own
        await wait_registered(gateway_redis, client.session_id)  # commands can reach it
        for _ in range(5):
            await client.send_audio(FRAME)
        await client.send("close", {"reason": "end"})
        close_seq = client.seq
        closing = await wait_for_event(gateway_redis, client.session_id, b"closing")
        assert json.loads(closing[b"data"]) == {"reason": "end", "position": "PT0.5S"}
        # `closed` waits for the consumer: nothing arrives meanwhile
        await client.expect_silence(0.3)
        for text, offset in (("hello", "PT0.1S"), ("world", "PT0.3S")):
            entities = [transcript(text, offset)]
            reply = await control.request(client.session_id, "event", entities=entities)
            assert reply.result == APPLIED
        assert (await control.request(client.session_id, "finish")).result == APPLIED
        first = await client.expect("event", clientseq=close_seq)
        second = await client.expect("event", clientseq=close_seq)
        closed = await client.expect("closed", clientseq=close_seq)
        texts = [display_text(m.parameters["entities"][0]) for m in (first, second)]
        assert texts == ["hello", "world"]
        assert closed.seq == second.seq + 1
        client.assert_conformant()
    closed_event = await wait_for_event(gateway_redis, client.session_id, b"closed")
    assert json.loads(closed_event[b"data"])["reason"] == "end"
    events = [f[b"type"] for f in await events_of(gateway_redis, client.session_id)]
    assert events[-2:] == [b"closing", b"closed"]
    after = await scrape(window_gateway)
    grew = Growth(before, after)
    assert grew("audiohook_close_windows_total", outcome="finished") == 1
    assert grew("audiohook_close_window_seconds_count") == 1


async def test_close_window_is_bounded_when_no_consumer_answers(
    window_gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    before = await scrape(window_gateway)
    async with await connect_transcribing(window_gateway) as client:
        await client.open()
        await client.send_audio(FRAME)
        await client.send("close", {"reason": "end"})
        sent_at = time.monotonic()
        await client.expect_silence(WINDOW * 0.8)  # the window is open: no `closed` yet
        closed = await client.expect("closed", timeout=WINDOW + 2.0)
        assert closed.received_at - sent_at >= WINDOW * 0.9
        client.assert_conformant()
        # once closed, `finish` has nothing to end
        reply = await ControlClient(gateway_redis).request(client.session_id, "finish")
        assert reply.result in (INVALID_STATE, UNKNOWN_SESSION)
    after = await scrape(window_gateway)
    assert Growth(before, after)("audiohook_close_windows_total", outcome="expired") == 1


async def test_monitor_integrations_answer_close_at_once(
    window_gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    async with await RawClient.connect(window_gateway.ws_url) as client:
        await client.open()
        await client.send_audio(FRAME)
        await wait_registered(gateway_redis, client.session_id)
        reply = await ControlClient(gateway_redis).request(client.session_id, "finish")
        assert reply.result == INVALID_STATE  # no close window while streaming
        await client.close()  # `closed` is the next message: no window
        client.assert_conformant()
    await wait_for_event(gateway_redis, client.session_id, b"closed")
    events = [f[b"type"] for f in await events_of(gateway_redis, client.session_id)]
    assert b"closing" not in events


async def test_language_update_is_published_for_consumers(
    window_gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    async with await connect_transcribing(window_gateway) as client:
        await client.open()
        await client.send("update", {"language": "de-DE"})
        await client.expect("updated")
        updated = await wait_for_event(gateway_redis, client.session_id, b"language_updated")
        assert json.loads(updated[b"data"]) == {"language": "de-DE"}
        await client.send("close", {"reason": "end"})
        await wait_for_event(gateway_redis, client.session_id, b"closing")
        await wait_registered(gateway_redis, client.session_id)
        reply = await ControlClient(gateway_redis).request(client.session_id, "finish")
        assert reply.result == APPLIED
        await client.expect("closed")


async def test_draining_ends_an_open_close_window(
    redis_server: EmbeddedRedis, tmp_path: Path, gateway_redis: redis.asyncio.Redis
) -> None:
    long_window = {**TRANSCRIBING, "close_window_seconds": 9.0}
    settings = {"DRAIN_GRACE_SECONDS": "0.2", "DRAIN_CLOSE_WAIT_SECONDS": "2"}
    with running_gateway(redis_server, tmp_path, settings, [long_window]) as gateway:
        async with await connect_transcribing(gateway) as client:
            await client.open()
            await client.send("close", {"reason": "end"})
            await wait_for_event(gateway_redis, client.session_id, b"closing")
            gateway.terminate()
            # well inside the 9 s window: the drain answers the close itself
            await client.expect("closed", timeout=5.0)
            client.assert_conformant()
        assert gateway.wait(15.0) == 0


async def test_close_window_is_bounded_while_redis_is_down(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    # No consumer can hear of the `close` while Redis is down: the bound answers it.
    with running_gateway(own_redis, tmp_path, integrations=[TRANSCRIBING]) as gateway:
        async with await connect_transcribing(gateway) as client:
            await client.open()
            await client.send_audio(FRAME)
            async with redis_outage(own_redis):
                await client.send("close", {"reason": "end"})
                await client.expect("closed", timeout=WINDOW + 2.0)
                client.assert_conformant()
        await wait_for_metric(gateway, "audiohook_close_windows_total", 1.0, outcome="expired")
