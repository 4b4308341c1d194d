"""Issue 5: the gateway's JSON log lines name the session and never carry audio or secrets.

A gateway runs at INFO and one at DEBUG (what leaks at DEBUG leaks in production the day
someone turns it on) while a plain call, an encrypted call, a consumer command, an
authentication failure and a protocol error go through each. Then the whole log is searched
for the credentials, the signature values, the payload key and a distinctive audio pattern,
and every line about a session is checked for the session's ids.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio

from app.control.plane import APPLIED, ControlClient
from app.redis.embedded import EmbeddedRedis
from tests.integration.e2e.support import (
    SECURE_API_KEY,
    SECURE_CLIENT_SECRET,
    WireCall,
    running_gateway,
)
from tests.support.gateway_process import TEST_API_KEY, TEST_CLIENT_SECRET
from tests.support.registry import wait_registered
from tests.support.session_streams import closed_session_stream
from tests.support.streams import TEST_KEY

MARKER = b"AUDIO-MARKER-7f3a9c-"  # 20 bytes: a whole number of stereo PCMU samples
AUDIO_FRAME = MARKER * 160  # 3200 bytes, 200 ms of stereo PCMU
WRONG_SECRET = base64.b64encode(b"a-wrong-secret-of-32-bytes-long!").decode()
SESSION_KEYS = ("session_id", "correlation_id", "conversation_id", "integration")


@dataclass
class Session:
    call: WireCall
    conversation_id: str
    integration: str


@dataclass
class Traffic:
    sessions: dict[str, Session] = field(default_factory=dict)  # the calls that opened
    refused: WireCall | None = field(default=None, repr=False)  # the authentication failure
    log_text: str = field(default="", repr=False)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_text.splitlines()]

    @property
    def calls(self) -> list[WireCall]:
        assert self.refused is not None
        return [session.call for session in self.sessions.values()] + [self.refused]


async def _open_call(uri: str, api_key: str, secret: str, frames: int) -> tuple[WireCall, str]:
    call = await WireCall.connect(uri, api_key=api_key, client_secret=secret)
    conversation_id = str(uuid.uuid4())
    await call.open(conversation_id)
    for _ in range(frames):
        await call.audio(AUDIO_FRAME, 1600)
    return call, conversation_id


async def _run_traffic(uri: str, redis_url: str, traffic: Traffic) -> None:
    redis_conn = redis.asyncio.Redis.from_url(redis_url)
    try:
        plain, plain_conversation = await _open_call(uri, TEST_API_KEY, TEST_CLIENT_SECRET, 50)
        secure, secure_conversation = await _open_call(uri, SECURE_API_KEY, SECURE_CLIENT_SECRET, 5)
        traffic.sessions["plain"] = Session(plain, plain_conversation, "test")
        traffic.sessions["secure"] = Session(secure, secure_conversation, "secure")

        await wait_registered(redis_conn, plain.session_id)
        reply = await ControlClient(redis_conn).request(plain.session_id, "pause")
        assert reply.result == APPLIED
        await plain.expect("pause")
        await plain.send("paused", {})
        for call in (plain, secure):
            await call.close()
            await closed_session_stream(redis_conn, call.session_id)

        refused = await WireCall.connect(uri, client_secret=WRONG_SECRET)
        traffic.refused = refused
        await refused.send_open()
        assert (await refused.expect("disconnect"))["reason"] == "unauthorized"
        await refused.close("disconnect")

        broken, broken_conversation = await _open_call(uri, TEST_API_KEY, TEST_CLIENT_SECRET, 1)
        traffic.sessions["broken"] = Session(broken, broken_conversation, "test")
        await broken.ws.send(AUDIO_FRAME[:101])  # not a whole number of stereo samples
        assert (await broken.expect("disconnect"))["reason"] == "error"
        await broken.close("disconnect")
    finally:
        await redis_conn.aclose()


@pytest.fixture(scope="module", params=["INFO", "DEBUG"])
def traffic(
    request: pytest.FixtureRequest,
    e2e_redis: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Traffic:
    level = str(request.param)
    log_path = tmp_path_factory.mktemp(f"logs-{level}") / "gateway.log"
    result = Traffic()
    settings = {"LOG_LEVEL": level}
    with running_gateway(e2e_redis.url, log_path, f"replica-{level}", settings) as gateway:
        asyncio.run(_run_traffic(gateway.ws_url, e2e_redis.url, result))
    result.log_text = log_path.read_text(errors="replace")
    return result


def _forbidden_values(calls: list[WireCall]) -> dict[str, str]:
    """Every value that must never appear in the log, by what it is."""
    values = {
        "client secret": TEST_CLIENT_SECRET,
        "client secret (decoded)": base64.b64decode(TEST_CLIENT_SECRET).decode(),
        "secure client secret": SECURE_CLIENT_SECRET,
        "secure client secret (decoded)": base64.b64decode(SECURE_CLIENT_SECRET).decode(),
        "wrong client secret": WRONG_SECRET,
        "payload key (base64)": base64.b64encode(TEST_KEY).decode(),
        "payload key (hex)": TEST_KEY.hex(),
        "audio": MARKER.decode(),
        "audio (hex)": MARKER.hex(),
        "audio (base64)": base64.b64encode(AUDIO_FRAME[:60]).decode(),
    }
    for n, call in enumerate(calls):
        signature = call.headers["Signature"]  # sig1=:<base64 MAC>:
        values[f"Signature header of call {n}"] = signature
        values[f"signature MAC of call {n}"] = signature.split(":")[1]
    return values


def test_no_secret_signature_or_audio_appears_in_the_log(traffic: Traffic) -> None:
    leaks = [
        what
        for what, value in _forbidden_values(traffic.calls).items()
        if value in traffic.log_text
    ]
    assert leaks == [], f"found in the gateway log: {leaks}"


def test_every_session_line_carries_the_session_ids(traffic: Traffic) -> None:
    records = traffic.records  # every line is one JSON object (json.loads would fail)
    for name, session in traffic.sessions.items():
        session_id = session.call.session_id
        lines = [r for r in records if r.get("session_id") == session_id]
        messages = [r["message"] for r in lines]
        assert "session opened" in messages, (name, messages)
        assert "session closed" in messages, (name, messages)
        expected = {
            "session_id": session_id,
            "correlation_id": session.call.correlation_id,
            "conversation_id": session.conversation_id,
            "integration": session.integration,
        }
        opened_at = messages.index("session opened")
        for record in lines[:opened_at]:  # before `open` the conversation is not known yet
            assert record.get("correlation_id") == expected["correlation_id"], record
        for record in lines[opened_at:]:
            assert {key: record.get(key) for key in SESSION_KEYS} == expected, record

    refused = traffic.refused
    assert refused is not None
    refused_lines = [r for r in records if r.get("session_id") == refused.session_id]
    assert any(r["level"] == "WARNING" for r in refused_lines), refused_lines
    assert all(r.get("correlation_id") == refused.correlation_id for r in refused_lines)


def test_no_per_frame_lines_at_info(traffic: Traffic) -> None:
    plain = traffic.sessions["plain"].call  # 50 frames
    mentions = [
        r for r in traffic.records if r["level"] != "DEBUG" and plain.session_id in json.dumps(r)
    ]
    assert len(mentions) < 10, [r["message"] for r in mentions]
