"""The Genesys-like client's own behaviour, observed by a small AudioHook server on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from app.client.audio import (
    PcmAudio,
    encode_frames,
    pcm_wav_bytes,
    tone,
    tone_source,
    wav_source,
)
from app.client.pacing import Pacer
from app.client.session import SessionConfig, SessionResult, media_offers, run_session
from app.client.simulate import add_arguments, run, simulate
from app.protocol.media import MediaFormat
from app.protocol.messages import NULL_UUID, parse_duration
from tests.integration.probe.conftest import API_KEY, SECRET, StartServer
from tests.integration.probe.servers import Connection, Faults, MiniServer


def config(server: MiniServer, **changes: Any) -> SessionConfig:
    defaults: dict[str, Any] = {
        "api_key": API_KEY,
        "client_secret": SECRET,
        "open_timeout": 1.0,
        "close_timeout": 1.0,
        "ping_first_delay": None,
    }
    return SessionConfig(uri=server.url, **(defaults | changes))


def assert_envelopes(conn: Connection, result: SessionResult) -> None:
    """Client seq counts 1, 2, 3...; serverseq never runs ahead of what the server sent."""
    assert [m["seq"] for m in conn.messages] == list(range(1, len(conn.messages) + 1))
    assert all(m["id"] == result.session_id and m["version"] == "2" for m in conn.messages)
    positions = [parse_duration(m["position"]) for m in conn.messages]
    assert positions == sorted(positions)
    assert [m["serverseq"] for m in conn.messages] == sorted(m["serverseq"] for m in conn.messages)


@pytest.mark.parametrize(
    ("fmt", "layout", "frame_size"),
    [
        ("PCMU", "stereo", 3200),
        ("L16", "stereo", 6400),
        ("PCMU", "external", 1600),
        ("L16", "internal", 3200),
        ("PCMU", "inverted", 3200),
    ],
)
async def test_frames_reach_the_server_as_recorded(
    start_server: StartServer, fmt: str, layout: str, frame_size: int
) -> None:
    server = await start_server()
    offers = media_offers(fmt, layout)  # type: ignore[arg-type]
    result = await run_session(
        config(server, offers=offers, source=tone_source(0.5), realtime=False)
    )
    assert result.ok, result.findings
    assert result.selected_media == offers[0]
    (conn,) = server.connections
    assert conn.signature_ok
    assert conn.messages[0]["parameters"]["media"] == offers
    assert [len(f) for f in conn.frames] == [frame_size, frame_size, frame_size // 2]
    assert conn.frames == [frame.data for frame in result.frames]
    assert [frame.offset for frame in result.frames] == [0, 1600, 3200]
    assert result.frames_sent == 3
    assert result.samples_sent == 4000
    close = conn.messages[-1]
    assert close["type"] == "close"
    assert close["parameters"] == {"reason": "end"}
    assert close["position"] == "PT0.5S"
    assert_envelopes(conn, result)


async def test_a_stereo_wav_arrives_byte_exact(start_server: StartServer, tmp_path: Path) -> None:
    audio = PcmAudio(tone(0.7, 1000).external, tone(0.7, 300).external)
    path = tmp_path / "call.wav"
    path.write_bytes(pcm_wav_bytes(audio))
    server = await start_server()
    result = await run_session(config(server, source=wav_source(path), realtime=False))
    assert result.ok
    expected = encode_frames(audio, MediaFormat("PCMU", ("external", "internal")))
    assert b"".join(server.connections[0].frames) == b"".join(expected)


async def test_open_parameters(start_server: StartServer) -> None:
    server = await start_server()
    cfg = config(server, language="de-DE", supported_languages=True)
    cfg.custom_config = {"tenant": "a"}
    result = await run_session(cfg)
    assert not result.ok  # this server never lists supportedLanguages although asked
    assert [f.field for f in result.errors] == ["opened.parameters.supportedLanguages"]
    params = server.connections[0].messages[0]["parameters"]
    assert params["language"] == "de-DE"
    assert params["supportedLanguages"] is True
    assert params["customConfig"] == {"tenant": "a"}
    assert params["organizationId"] == cfg.organization_id
    assert params["participant"]["ani"] == "+1-555-555-1234"
    headers = server.connections[0].headers
    assert headers["Audiohook-Session-Id"] == cfg.session_id
    assert headers["Audiohook-Correlation-Id"] == cfg.correlation_id


async def test_unsigned_upgrade(start_server: StartServer) -> None:
    server = await start_server(client_secret=None)
    result = await run_session(config(server, client_secret=None))
    assert result.ok
    assert "Signature" not in server.connections[0].headers


async def test_pause_and_resume(start_server: StartServer) -> None:
    faults = Faults(after_opened=[(0.3, "pause", {}), (0.8, "resume", {})])
    server = await start_server(faults)
    result = await run_session(config(server, source=tone_source(1.4)))
    assert result.ok, result.findings
    (conn,) = server.connections
    types = [m["type"] for m in conn.messages]
    assert types == ["open", "paused", "resumed", "close"]
    resumed = conn.messages[2]["parameters"]
    start, discarded = parse_duration(resumed["start"]), parse_duration(resumed["discarded"])
    assert discarded > 0
    assert discarded % 1600 == 0
    assert discarded == result.samples_discarded
    # The frames skip exactly the discarded span, and the server got every frame that was sent.
    offsets = [frame.offset for frame in result.frames]
    gap = next(b - a for a, b in itertools.pairwise(offsets) if b - a != 1600)
    assert gap == 1600 + discarded
    assert offsets[offsets.index(start - 1600) + 1] == start + discarded
    assert len(conn.frames) == len(result.frames)
    assert result.samples_sent + result.samples_discarded == 1.4 * 8000
    assert conn.messages[-1]["position"] == "PT1.4S"


async def test_start_paused_and_resume(start_server: StartServer) -> None:
    faults = Faults(opened_extra={"startPaused": True}, after_opened=[(0.5, "resume", {})])
    server = await start_server(faults)
    result = await run_session(config(server, source=tone_source(1.0), realtime=False))
    assert result.ok
    assert result.start_paused
    (conn,) = server.connections
    assert [m["type"] for m in conn.messages] == ["open", "paused", "resumed", "close"]
    assert conn.messages[1]["seq"] == 2  # paused right after opened, before any audio
    resumed = conn.messages[2]["parameters"]
    assert resumed["start"] == "PT0S"
    assert parse_duration(resumed["discarded"]) >= 1600
    assert result.frames[0].offset == parse_duration(resumed["discarded"])


async def test_discard_to(start_server: StartServer) -> None:
    server = await start_server(Faults(opened_extra={"discardTo": "PT0.5S"}))
    result = await run_session(config(server, source=tone_source(1.0), realtime=False))
    assert result.ok
    (conn,) = server.connections
    discarded = conn.messages[1]
    assert discarded["type"] == "discarded"
    # Rounded down to whole 200 ms frames.
    assert discarded["parameters"] == {"start": "PT0S", "discarded": "PT0.4S"}
    assert result.frames[0].offset == 3200
    assert len(conn.frames) == 3


async def test_server_disconnect_is_answered_with_close(start_server: StartServer) -> None:
    faults = Faults(after_opened=[(0.2, "disconnect", {"reason": "completed", "info": "done"})])
    server = await start_server(faults)
    result = await run_session(config(server, source=tone_source(5.0)))
    assert result.ok  # completed is a normal end
    assert result.disconnect == {"reason": "completed", "info": "done"}
    assert result.close_reason == "disconnect"
    assert result.closed
    assert server.connections[0].messages[-1]["parameters"] == {"reason": "disconnect"}
    assert [f.severity for f in result.findings] == ["warning"]


async def test_disconnect_error_fails_the_session(start_server: StartServer) -> None:
    faults = Faults(after_opened=[(0.1, "disconnect", {"reason": "error", "info": "bad"})])
    server = await start_server(faults)
    result = await run_session(config(server, source=tone_source(5.0)))
    assert not result.ok
    assert result.closed
    assert result.errors[0].rule == "disconnect"
    assert "(bad)" in result.errors[0].message


async def test_events_and_reconnect_are_recorded(start_server: StartServer) -> None:
    utterance = "e160e428-53e2-487c-977d-96989bf5c99d"
    entity = {"type": "transcript", "data": {"id": utterance, "channelId": 0, "isFinal": False}}
    faults = Faults(
        after_opened=[
            (0.1, "event", {"entities": [entity]}),
            (0.2, "reconnect", {"info": "draining"}),
            (0.3, "event", {"entities": [{"type": "agentassist", "data": {}}]}),
        ]
    )
    server = await start_server(faults)
    result = await run_session(config(server, source=tone_source(0.8)))
    assert result.ok, result.findings
    assert result.event_entities == [entity, {"type": "agentassist", "data": {}}]
    assert result.reconnects == ["draining"]
    received = [r.message["type"] for r in result.received if r.message]
    assert received == ["opened", "event", "reconnect", "event", "closed"]
    assert all(r.received_at > 0 for r in result.received)


async def test_ping_cadence_and_rtt(start_server: StartServer) -> None:
    server = await start_server()
    cfg = config(server, source=tone_source(1.2), ping_first_delay=0.2, ping_interval=0.4)
    result = await run_session(cfg)
    assert result.ok, result.findings
    pings = server.connections[0].of_type("ping")
    assert len(pings) >= 3
    assert result.pongs == result.pings == len(pings)
    # The second ping follows the first pong at once: it already reports the measured rtt.
    assert "rtt" not in pings[0]["parameters"]
    assert parse_duration(pings[1]["parameters"]["rtt"]) >= 0
    assert pings[0]["serverseq"] == 1
    assert pings[1]["serverseq"] == 2
    assert_envelopes(server.connections[0], result)


async def test_opened_timeout_sends_error_408_then_close(start_server: StartServer) -> None:
    server = await start_server(Faults(opened_delay=0.6))
    result = await run_session(config(server, open_timeout=0.2, source=tone_source(1.0)))
    assert not result.opened
    assert result.closed
    assert result.close_reason == "error"
    messages = server.connections[0].messages
    assert [m["type"] for m in messages] == ["open", "error", "close"]
    assert messages[1]["parameters"]["code"] == 408
    assert server.connections[0].frames == []


async def test_nothing_is_sent_after_closed(start_server: StartServer) -> None:
    faults = Faults(message_after_closed=True)
    server = await start_server(faults)
    result = await run_session(config(server, linger_after_closed=0.3))
    assert [f.rule for f in result.errors] == ["after-closed"]
    assert server.connections[0].messages[-1]["type"] == "close"


async def test_many_realtime_sessions_share_one_pacer(start_server: StartServer) -> None:
    server = await start_server()
    pacer = Pacer()
    results = await simulate(
        [config(server, source=tone_source(0.6)) for _ in range(20)], pacer=pacer
    )
    assert all(result.ok for result in results)
    assert {len(conn.frames) for conn in server.connections} == {3}
    assert pacer.tick >= 2  # real-time pacing ran off the shared clock


async def test_pacer_catches_up_after_a_stall() -> None:
    pacer = Pacer(0.01)
    with pacer.use():
        first = await pacer.wait()
        time.sleep(0.05)  # block the loop for five intervals
        await pacer.wait()
        after = await pacer.wait()
    assert after - first >= 5


# --- simulate CLI ------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


async def test_simulate_cli_runs_concurrent_calls(start_server: StartServer) -> None:
    server = await start_server()
    args = _args(
        "--uri", server.url, "--api-key", API_KEY, "--client-secret", SECRET,
        "--org-id", "d7934305-0972-4844-938e-9060eef73d05",
        "--sessions", "3", "--fast", "--seconds", "0.4",
        "--format", "L16", "--channels", "inverted",
    )  # fmt: skip
    out = io.StringIO()
    assert await run(args, out) == 0
    text = out.getvalue()
    assert "sessions: 3, connected 3, opened 3, closed 3, ok 3" in text
    assert "frames sent: 6 (38400 bytes)" in text
    assert "close: 3 closed after close end" in text
    assert len({c.headers["Audiohook-Session-Id"] for c in server.connections}) == 3
    assert {c.headers["Audiohook-Organization-Id"] for c in server.connections} == {
        "d7934305-0972-4844-938e-9060eef73d05"
    }
    offered = server.connections[0].messages[0]["parameters"]["media"]
    assert offered[0] == {
        "type": "audio", "format": "L16", "channels": ["internal", "external"], "rate": 8000
    }  # fmt: skip


async def test_simulate_cli_probe_and_json(start_server: StartServer) -> None:
    server = await start_server()
    out = io.StringIO()
    args = _args(
        "--uri", server.url, "--api-key", API_KEY, "--client-secret", SECRET, "--probe", "--json"
    )
    assert await run(args, out) == 0
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["ok"] is True
    assert server.connections[0].messages[0]["parameters"]["conversationId"] == NULL_UUID


async def test_simulate_cli_fails_on_a_broken_server(start_server: StartServer) -> None:
    server = await start_server(Faults(closed_clientseq_offset=5))
    out = io.StringIO()
    args = _args(
        "--uri",
        server.url,
        "--api-key",
        API_KEY,
        "--client-secret",
        SECRET,
        "--fast",
        "--seconds",
        "0.2",
    )
    assert await run(args, out) == 1
    assert "x closed.clientseq is" in out.getvalue()


async def test_simulate_cli_rejects_a_bad_wav(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav")
    args = _args("--api-key", API_KEY, "--wav", str(bad))
    assert await run(args, io.StringIO()) == 2


async def test_concurrent_clients_keep_their_sessions_apart(start_server: StartServer) -> None:
    server = await start_server()
    results = await asyncio.gather(
        *(run_session(config(server, source=tone_source(0.4), realtime=False)) for _ in range(10))
    )
    assert all(r.ok for r in results)
    by_session = {c.headers["Audiohook-Session-Id"]: c for c in server.connections}
    for result in results:
        assert by_session[result.session_id].frames == [f.data for f in result.frames]
