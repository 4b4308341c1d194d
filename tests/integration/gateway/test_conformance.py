"""The Monitor-applicable cases of the AudioHook conformance suite (docs/protocol.md §6), run
against the real gateway process with signed upgrades, plus a full call landing in Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio

from app.client.audio import tone_source
from app.client.session import SessionConfig, media_offers, run_session
from tests.integration.gateway.helpers import events_of
from tests.support.gateway_process import (
    TEST_API_KEY,
    TEST_CLIENT_SECRET,
    TEST_ORG_ID,
    GatewayProcess,
)
from tests.support.raw_client import RawClient, genesys_offers, offer
from tests.support.session_streams import closed_session_stream

OPEN_VARIANTS = {
    # name: (offers, the entry the gateway must select: stereo first, channel order kept)
    "double stream double channel": (genesys_offers(), offer("PCMU", "external", "internal")),
    "double stream double channel inverted": (
        genesys_offers(inverted=True),
        offer("PCMU", "internal", "external"),
    ),
    "single stream double channel": (
        [offer("PCMU", "external", "internal")],
        offer("PCMU", "external", "internal"),
    ),
    "single stream single channel external": (
        [offer("PCMU", "external")],
        offer("PCMU", "external"),
    ),
    "single stream single channel internal": (
        [offer("PCMU", "internal")],
        offer("PCMU", "internal"),
    ),
}


@pytest.mark.parametrize("variant", OPEN_VARIANTS)
async def test_open_variants(gateway: GatewayProcess, variant: str) -> None:
    offers, expected = OPEN_VARIANTS[variant]
    async with await RawClient.connect(gateway.ws_url) as client:
        opened = await client.open(offers)
        assert (opened.seq, opened.clientseq) == (1, 1)
        media = opened.parameters["media"]
        assert media == [expected]  # exactly one offered entry, verbatim
        assert media[0] in offers
        assert opened.parameters.get("startPaused") in (None, False)
        closed = await client.close()
        assert (closed.seq, closed.clientseq) == (2, 2)
        assert closed.parameters == {}
        client.assert_conformant()


async def test_open_with_extra_offer_keys_echoes_the_entry_verbatim(
    gateway: GatewayProcess,
) -> None:
    stereo = {**offer("PCMU", "internal", "external"), "x-vendor": {"a": 1}}
    async with await RawClient.connect(gateway.ws_url) as client:
        opened = await client.open([offer("PCMU", "internal"), stereo])
        assert opened.parameters["media"] == [stereo]
        await client.close()
        client.assert_conformant()


async def test_open_with_no_media_offered_is_opened_without_media(
    gateway: GatewayProcess,
) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        opened = await client.open([])
        assert opened.parameters["media"] == []
        await client.close()
        client.assert_conformant()


async def test_supported_languages_are_reported_when_asked(gateway: GatewayProcess) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        opened = await client.open(supportedLanguages=True)
        languages = opened.parameters.get("supportedLanguages")
        assert isinstance(languages, list)
        await client.close()
        client.assert_conformant()


async def test_ping_pong(gateway: GatewayProcess) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.send("ping")
        assert (client.seq, client.server_seq) == (2, 1)  # ping: seq 2, serverseq 1
        pong = await client.expect("pong")  # nothing may come between opened and pong
        assert (pong.seq, pong.clientseq) == (2, 2)
        assert pong.parameters == {}
        await client.send("ping", {"rtt": "PT0.012S"})
        pong = await client.expect("pong")
        assert (pong.seq, pong.clientseq) == (3, 3)
        await client.close()
        client.assert_conformant()


async def test_ping_is_answered_before_open(gateway: GatewayProcess) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.send("ping")
        pong = await client.expect("pong")
        assert (pong.seq, pong.clientseq) == (1, 1)
        opened = await client.open()
        assert (opened.seq, opened.clientseq) == (2, 2)
        await client.close()


async def test_ping_then_close(gateway: GatewayProcess) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.send("ping")
        await client.send("close", {"reason": "end"})  # at once: serverseq still 1
        pong = await client.expect("pong", clientseq=2)
        assert (pong.seq, pong.clientseq) == (2, 2)
        closed = await client.expect("closed")
        assert (closed.seq, closed.clientseq) == (3, 3)
        await client.expect_silence(0.2)  # nothing after closed
        client.assert_conformant()


async def test_update_is_answered_with_updated(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.send("update", {"language": "de-DE"})
        updated = await client.expect("updated")
        assert (updated.seq, updated.clientseq, updated.parameters) == (2, 2, {})
        await client.send("update", {"language": "fr-CA"})
        await client.send("close", {"reason": "end"})
        await client.expect("updated", clientseq=3)
        closed = await client.expect("closed")
        assert (closed.seq, closed.clientseq) == (4, 4)
        client.assert_conformant()
    stream = await closed_session_stream(gateway_redis, client.session_id)
    updates = [json.loads(e[b"data"]) for e in stream.events if e[b"type"] == b"language_updated"]
    assert updates == [{"language": "de-DE"}, {"language": "fr-CA"}]


async def test_discarded_then_close(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.send("discarded", {"start": "PT6.3S", "discarded": "PT0.3S"})
        closed = await client.close()
        assert (closed.seq, closed.clientseq) == (2, 3)
        client.assert_conformant()
    stream = await closed_session_stream(gateway_redis, client.session_id)
    assert stream.event_data("discarded") == {"start": "PT6.3S", "discarded": "PT0.3S"}


async def test_discarded_audio_advances_the_timeline(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    frame = bytes(range(200)) * 16  # 3200 bytes: 200 ms of stereo PCMU
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.send_audio(frame)  # [0, 0.2 s)
        await client.send("discarded", {"start": "PT0.2S", "discarded": "PT0.3S"})
        client.position += 2400
        await client.send_audio(frame)  # [0.5 s, 0.7 s)
        await client.close()
        client.assert_conformant()
    stream = await closed_session_stream(gateway_redis, client.session_id)
    assert stream.offsets == [0, 4000]
    assert stream.event_data("closed")["counts"]["samples"] == 5600


async def test_client_error_then_close_does_not_abort(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.send("error", {"code": 400, "message": "tough stuff"})
        closed = await client.close()  # no disconnect before it
        assert (closed.seq, closed.clientseq) == (2, 3)
        client.assert_conformant()
    stream = await closed_session_stream(gateway_redis, client.session_id)
    error = stream.event_data("client_error")
    assert (error["code"], error["message"]) == (400, "tough stuff")


async def test_paused_twice_then_resumed(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    frame = bytes(range(256)) * 12 + bytes(128)  # 3200 bytes: 200 ms of stereo PCMU
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.send_audio(frame)
        await client.send_audio(frame)  # position: 3200 samples
        await client.send("paused")
        await client.send("paused")  # seq 2 and 3; a duplicate is harmless
        await asyncio.sleep(0.5)  # the client keeps time but sends no audio
        pause_start = client.position
        client.position += 4000  # 0.5 s not sent
        await client.send("resumed", {"start": "PT0.4S", "discarded": "PT0.5S"})
        await client.send_audio(frame)
        closed = await client.close()
        assert (closed.seq, closed.clientseq) == (2, 5)
        client.assert_conformant()
    stream = await closed_session_stream(gateway_redis, client.session_id)
    assert stream.frames == [frame, frame, frame]
    # The frame after the pause lands after the discarded span on the session timeline.
    assert stream.offsets == [0, 1600, pause_start + 4000]
    assert stream.event_types == ["opened", "paused", "resumed", "closed"]
    assert stream.event_data("resumed") == {"start": "PT0.4S", "discarded": "PT0.5S"}


async def test_close(gateway: GatewayProcess) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        closed = await client.close()
        assert (closed.seq, closed.clientseq, closed.parameters) == (2, 2, {})
        await client.expect_silence(0.2)
        client.assert_conformant()


async def test_nothing_is_sent_after_closed(gateway: GatewayProcess) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.close()
        await client.send("ping")
        await client.send("close", {"reason": "end"})
        await client.expect_silence(0.3)


@pytest.mark.parametrize(("fmt", "layout"), [("PCMU", "stereo"), ("L16", "inverted")])
async def test_full_call_lands_in_redis(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis, fmt: Any, layout: Any
) -> None:
    config = SessionConfig(
        uri=gateway.ws_url,
        api_key=TEST_API_KEY,
        client_secret=TEST_CLIENT_SECRET,
        organization_id=TEST_ORG_ID,
        offers=media_offers(fmt, layout),
        source=tone_source(3.0),
        realtime=False,
    )
    result = await run_session(config)
    assert result.ok, [finding.text for finding in result.findings]
    assert result.selected_media == config.offers[0]
    assert result.frames_sent == 15  # 3 s in 200 ms frames
    stream = await closed_session_stream(gateway_redis, config.session_id)
    assert stream.frames == [frame.data for frame in result.frames]
    assert stream.offsets == [frame.offset for frame in result.frames]
    assert [int(entry[b"samples"]) for entry in stream.audio] == [1600] * 15
    assert stream.event_types == ["opened", "closed"]
    opened = stream.event_data("opened")
    assert opened["media"]["format"] == fmt
    assert opened["media"]["channels"] == config.offers[0]["channels"]
    closed = stream.event_data("closed")
    assert closed["reason"] == "end"
    assert closed["counts"]["frames"] == 15
    assert closed["frames_lost"] == 0
    discovered = [e[b"type"] for e in await events_of(gateway_redis, config.session_id)]
    assert discovered[0] == b"opened"
    assert discovered[-1] == b"closed"
