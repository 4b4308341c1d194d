"""Bad input over the real gateway: each gets its protocol answer (`disconnect` error with a
short info, counted by kind; or an HTTP status before the upgrade), the misbehaving client
still gets `closed` for its `close`, and a good call streaming on another connection at the
same time is unharmed (every frame in Redis, closed normally)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio

from app.protocol.messages import MAX_TEXT_CHARS
from tests.integration.gateway.helpers import alongside_good_call
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import PROTOCOL_ERRORS, REJECTED, MetricDelta
from tests.support.raw_client import RawClient, new_id, offer

Script = Callable[[RawClient], Awaitable[object]]


def _ping_of_length(client: RawClient, length: int, pad: str = "x") -> str:
    """A well-formed `ping` (next seq) padded with an extra parameter to `length` chars."""
    message = {
        "version": "2",
        "type": "ping",
        "id": client.session_id,
        "seq": client.seq + 1,
        "serverseq": client.server_seq,
        "position": "PT0S",
        "parameters": {"pad": ""},
    }
    bare = len(json.dumps(message, separators=(",", ":")))
    message["parameters"] = {"pad": pad * (length - bare)}
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    assert len(text) == length
    return text


@dataclass(frozen=True)
class Case:
    script: Script
    kind: str | None  # audiohook_protocol_errors_total{kind}; None: not a client violation
    info: str  # expected in the disconnect info (case-insensitive)


def after_open(script: Script, *offers: dict[str, object]) -> Script:
    """Open (with `offers`, default the Genesys three), then run `script`."""

    async def run(client: RawClient) -> None:
        await client.open(list(offers) if offers else None)
        await script(client)

    return run


async def _too_large(client: RawClient) -> None:
    await client.send_text(_ping_of_length(client, MAX_TEXT_CHARS + 1))


def bad_parameters(msg_type: str, parameters: dict[str, object]) -> Script:
    async def run(client: RawClient) -> None:
        await client.send(msg_type, parameters)

    return run


def audio(size: int) -> Script:
    async def run(client: RawClient) -> None:
        await client.send_audio(b"\x7f" * size)

    return run


async def _paused_then_audio(client: RawClient) -> None:
    await client.send("paused")
    await client.send_audio(b"\x7f" * 3200)


async def _bad_open(client: RawClient) -> None:
    await client.send_open(organizationId="not-a-uuid")


async def _no_supported_media(client: RawClient) -> None:
    await client.send_open(
        [offer("PCMA", "external", "internal"), offer("PCMU", "external", rate=16000)]
    )


L16_STEREO = offer("L16", "external", "internal")
L16_MONO = offer("L16", "external")
PCMU_STEREO = offer("PCMU", "external", "internal")


CASES: dict[str, Case] = {
    "text over 65535 chars": Case(after_open(_too_large), "too_large", "too large"),
    "invalid JSON": Case(
        after_open(lambda c: c.send_text('{"version": "2", ')), "invalid_json", "json"
    ),
    "not an object": Case(
        after_open(lambda c: c.send_text("[1, 2]")), "malformed_message", "well-formed"
    ),
    "unknown message type": Case(
        after_open(lambda c: c.send("dance")), "unknown_type", "not a supported"
    ),
    "bad open parameters": Case(_bad_open, "bad_parameters", "organizationId"),
    "bad update language": Case(
        after_open(bad_parameters("update", {"language": "english"})), "bad_parameters", "language"
    ),
    "bad discarded start": Case(
        after_open(bad_parameters("discarded", {"start": "6.3", "discarded": "PT0.3S"})),
        "bad_parameters",
        "start",
    ),
    "resumed without discarded": Case(
        after_open(bad_parameters("resumed", {"start": "PT1S"})), "bad_parameters", "discarded"
    ),
    "error with a string code": Case(
        after_open(bad_parameters("error", {"code": "400", "message": "x"})),
        "bad_parameters",
        "code",
    ),
    "ping with a bad rtt": Case(
        after_open(bad_parameters("ping", {"rtt": "fast"})), "bad_parameters", "rtt"
    ),
    "close with an unknown reason": Case(
        after_open(bad_parameters("close", {"reason": "bogus"})), "bad_parameters", "reason"
    ),
    "wrong seq": Case(after_open(lambda c: c.send("ping", seq=5)), "bad_seq", "seq"),
    "serverseq ahead": Case(
        after_open(lambda c: c.send("ping", serverseq=10)), "bad_serverseq", "serverseq"
    ),
    "wrong session id": Case(
        after_open(lambda c: c.send("ping", session_id=new_id())), "id_mismatch", "identifier"
    ),
    "audio before open": Case(audio(3200), "audio_not_allowed", "audio"),
    "odd-length L16 frame": Case(after_open(audio(6401), L16_STEREO), "bad_frame_size", "sample"),
    "L16 stereo frame with half a sample group": Case(
        after_open(audio(6402), L16_STEREO), "bad_frame_size", "sample"
    ),
    "odd-length L16 mono frame": Case(
        after_open(audio(1601), L16_MONO), "bad_frame_size", "sample"
    ),
    "PCMU stereo frame with half a sample group": Case(
        after_open(audio(3201), PCMU_STEREO), "bad_frame_size", "sample"
    ),
    "frame over max_frame_bytes": Case(
        after_open(audio(65536 + 2), PCMU_STEREO), "frame_too_large", "too large"
    ),
    "audio while paused": Case(after_open(_paused_then_audio), "audio_not_allowed", "PAUSED"),
    "no acceptable media offered": Case(_no_supported_media, None, "no supported media"),
}


@pytest.mark.parametrize("case", CASES)
async def test_bad_input_is_answered_while_a_good_call_carries_on(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis, case: str
) -> None:
    spec = CASES[case]
    violations = MetricDelta(gateway, PROTOCOL_ERRORS, kind=spec.kind or "")
    async with (
        alongside_good_call(gateway.ws_url, gateway_redis),
        await RawClient.connect(gateway.ws_url) as client,
    ):
        await spec.script(client)
        disconnect = await client.expect_disconnect("error")
        assert isinstance(disconnect.info, str)
        assert spec.info.lower() in disconnect.info.lower(), disconnect.info
        # The session still answers the client's close (reason disconnect) with closed.
        closed = await client.close("disconnect")
        assert closed.parameters == {}
        await client.expect_silence(0.1)
    if spec.kind is not None:
        assert violations.delta() == 1


async def test_wrong_seq_then_the_session_resynchronises_for_close(
    gateway: GatewayProcess,
) -> None:
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.send("ping", seq=7)
        disconnect = await client.expect_disconnect("error", clientseq=7)
        assert "seq" in disconnect.info.lower()
        closed = await client.close("disconnect")  # seq 8
        assert (closed.seq, closed.clientseq) == (3, 8)


@pytest.mark.parametrize("pad", ["x", "\u00e9", "\u20ac"], ids=["ascii", "2-byte", "3-byte"])
async def test_a_text_of_exactly_65535_chars_is_accepted(gateway: GatewayProcess, pad: str) -> None:
    """The limit counts characters: up to 65,535 are fine in any UTF-8 encoding."""
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.send_text(_ping_of_length(client, MAX_TEXT_CHARS, pad))
        client.seq += 1
        client.checker.sent("ping", client.seq)
        await client.expect("pong")
        await client.close()
        client.assert_conformant()


@pytest.mark.parametrize(
    "headers",
    [
        {"Audiohook-Session-Id": None},
        {"Audiohook-Session-Id": "not-a-uuid"},
        {"Audiohook-Session-Id": ""},
        # UUID versions 6-8 fail the protocol's UUID rule (docs/protocol.md §3.1), as the session
        # would reject the id in every message: refused before the upgrade.
        {"Audiohook-Session-Id": "01890a5d-ac96-774b-bcce-b302099a8057"},
        {"Audiohook-Session-Id": "30b0e395-84d3-4570-7c13-9a62d8f514c0"},
        # The null UUID would let the `open` message choose the session id (unsigned).
        {"Audiohook-Session-Id": "00000000-0000-0000-0000-000000000000"},
    ],
    ids=["missing", "not a uuid", "empty", "uuid version 7", "bad uuid variant", "null uuid"],
)
async def test_a_bad_session_id_header_gets_http_400(
    gateway: GatewayProcess,
    gateway_redis: redis.asyncio.Redis,
    headers: dict[str, str | None],
) -> None:
    refused = MetricDelta(gateway, REJECTED, cause="bad_request")
    async with alongside_good_call(gateway.ws_url, gateway_redis):
        rejection = await RawClient.rejection(gateway.ws_url, headers=headers)
        assert rejection.status == 400
    assert refused.delta() == 1


async def test_a_message_beyond_the_websocket_limit_closes_the_socket(
    gateway: GatewayProcess, gateway_redis: redis.asyncio.Redis
) -> None:
    """Far beyond any protocol limit the WebSocket layer refuses it: close 1009."""
    async with (
        alongside_good_call(gateway.ws_url, gateway_redis),
        await RawClient.connect(gateway.ws_url) as client,
    ):
        await client.open()
        await client.send_audio(bytes(400_000))
        assert await client.expect_socket_closed() == 1009


async def test_audio_in_flight_after_a_disconnect_is_counted_not_reported_per_frame(
    gateway: GatewayProcess,
) -> None:
    reported = MetricDelta(gateway, PROTOCOL_ERRORS, kind="audio_not_allowed")
    dropped = MetricDelta(gateway, "audiohook_audio_frames_dropped_total")
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.send_audio(bytes(3200))
        await client.send("ping", {}, seq=client.seq + 5)  # a bad seq: disconnect error
        await client.expect_disconnect("error")
        for _ in range(5):  # frames the client had in flight
            await client.send_audio(bytes(3200))
        await client.close("disconnect")
    assert reported.delta() == 0
    assert dropped.delta() == 5
