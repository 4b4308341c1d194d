"""Issue 4: consumers' commands reach a live call whichever gateway process holds it.

Two real gateway processes share one Redis; a simulated call runs on each. A consumer that
knows only session ids sends pause, resume, a transcript `event` and disconnect through
`ControlClient`; every command is applied by the replica holding the session and shows up at
the client exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from app.client.audio import tone_source
from app.client.session import ClientSession
from app.control.plane import (
    APPLIED,
    RATE_LIMITED_RESULT,
    UNKNOWN_SESSION,
    ControlClient,
)
from app.redis import keys
from app.redis.embedded import EmbeddedRedis
from app.tools.consume import run_consumer
from app.tools.wav import read_wav
from tests.integration.e2e.support import (
    WireCall,
    call_config,
    new_consumer_group,
    running_gateway,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import Growth, scrape
from tests.support.registry import wait_registered
from tests.support.session_streams import closed_session_stream
from tests.support.streams import read_stream
from tests.support.waiting import wait_until

TRANSCRIPT: dict[str, Any] = {
    "type": "transcript",
    "data": {
        "id": "9a1f8d1c-4c5e-4bb2-9a43-3b8f3f1f2a10",
        "channelId": 0,
        "isFinal": True,
        "offset": "PT0.4S",
        "duration": "PT1.2S",
        "alternatives": [
            {
                "confidence": 0.93,
                "interpretations": [{"type": "display", "transcript": "hello there"}],
            }
        ],
    },
}
INFO = "consumer finished"


@pytest.fixture(scope="module")
def second_gateway(
    e2e_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    log_path = tmp_path_factory.mktemp("gateway-b") / "gateway.log"
    with running_gateway(e2e_redis.url, log_path, "replica-b") as process:
        yield process


async def _client_sees(
    call: ClientSession, check: Callable[[ClientSession], bool], what: str
) -> None:
    async def seen() -> bool:
        return check(call)

    await wait_until(seen, f"{what} at the client of {call.config.session_id}", timeout=5)


async def test_pause_resume_event_and_disconnect_reach_the_call_on_either_gateway(
    gateway: GatewayProcess,
    second_gateway: GatewayProcess,
    redis_conn: redis.asyncio.Redis,
    tmp_path: Path,
) -> None:
    gateways = {"replica-a": gateway, "replica-b": second_gateway}
    before = {replica: await scrape(gw) for replica, gw in gateways.items()}
    group = await new_consumer_group(redis_conn)
    calls = {
        replica: ClientSession(call_config(gw, realtime=True, source=tone_source(20.0)))
        for replica, gw in gateways.items()
    }
    tasks = [asyncio.create_task(call.run()) for call in calls.values()]
    for replica, call in calls.items():
        await wait_registered(redis_conn, call.config.session_id, replica)

    control = ControlClient(redis_conn)

    async def command(name: str, check: Callable[[ClientSession], bool], **params: Any) -> None:
        for replica, call in calls.items():
            reply = await control.request(call.config.session_id, name, **params)
            assert (reply.result, reply.replica) == (APPLIED, replica), reply
            await _client_sees(call, check, name)

    await command("pause", lambda call: call.result.pauses == 1)
    await asyncio.sleep(0.6)  # paused for a few frames' worth: the calls discard audio
    paused_frames = {id(call): call.result.frames_sent for call in calls.values()}
    await command("resume", lambda call: call.result.resumes == 1)
    for call in calls.values():  # audio flows again after the gap
        await _client_sees(
            call, lambda c: c.result.frames_sent > paused_frames[id(c)], "audio after resume"
        )
    await command("event", lambda call: call.result.event_entities == [TRANSCRIPT],
                  entities=[TRANSCRIPT])  # fmt: skip
    await command("disconnect", lambda call: call.result.disconnect is not None,
                  reason="completed", info=INFO)  # fmt: skip
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)

    for result in results:
        assert result.disconnect == {"reason": "completed", "info": INFO}
        assert result.close_reason == "disconnect"
        assert result.closed
        assert (result.pauses, result.resumes) == (1, 1)
        assert result.event_entities == [TRANSCRIPT]
        assert result.errors == [], [finding.text for finding in result.errors]
        stream = await closed_session_stream(redis_conn, result.session_id)
        assert stream.event_types == ["opened", "paused", "resumed", "closed"]
        # Audio skipped while paused leaves a gap on the timeline, not a shift.
        assert result.samples_discarded > 0
        assert stream.offsets_and_audio == [(f.offset, f.data) for f in result.frames]
        assert stream.event_data("closed")["reason"] == "disconnect"
        # Once the call is over, its id is unknown to every replica.
        owner_key = keys.session_owner(result.session_id)

        async def unregistered(key: str = owner_key) -> bool:
            return not await redis_conn.exists(key)

        await wait_until(unregistered, f"{result.session_id} unregistered")
        late = await control.request(result.session_id, "pause")
        assert late.result == UNKNOWN_SESSION

    # The pause is a gap on the timeline, which the consumer can fill with silence.
    recordings = await asyncio.wait_for(
        run_consumer(redis_conn, tmp_path, group=group, consumer="c", keys={},
                     sessions_limit=len(results), fill_gaps=True, block_seconds=0.1,
                     wav_encoding="mulaw"),
        timeout=10,
    )  # fmt: skip
    assert sorted(r.session_id for r in recordings) == sorted(r.session_id for r in results)
    for recording, result in zip(
        sorted(recordings, key=lambda r: r.session_id),
        sorted(results, key=lambda r: r.session_id),
        strict=True,
    ):
        last = result.frames[-1]
        timeline = last.offset + len(last.data) // 2  # samples per channel, stereo PCMU
        assert len(read_wav(tmp_path / f"{result.session_id}.wav").data) == 2 * timeline
        assert len(recording.audio.gaps) == 1

    never = await control.request("6c1b0f7e-8f55-4c36-9d0a-2f4b7b8f0c11", "resume")
    assert never.result == UNKNOWN_SESSION

    for replica, gw in gateways.items():
        grew = Growth(before[replica], await scrape(gw))
        for name in ("pause", "resume", "event", "disconnect"):
            assert grew("audiohook_control_commands_total", command=name, result=APPLIED) == 1
        assert grew("audiohook_event_messages_sent_total", integration="test") == 1
        assert grew("audiohook_disconnects_sent_total", reason="completed") == 1


async def test_a_client_429_holds_back_event_commands_for_its_retry_after(
    gateway: GatewayProcess, redis_conn: redis.asyncio.Redis
) -> None:
    before = await scrape(gateway)
    call = await WireCall.connect(gateway.ws_url)
    await call.open()
    await wait_registered(redis_conn, call.session_id)
    control = ControlClient(redis_conn)
    assert (
        await control.request(call.session_id, "event", entities=[TRANSCRIPT])
    ).result == APPLIED
    assert (await call.expect("event"))["entities"] == [TRANSCRIPT]

    await call.send("error", {"code": 429, "message": "Too Many Requests", "retryAfter": "PT30S"})

    async def error_recorded() -> bool:
        entries = await read_stream(redis_conn, keys.audio_stream(call.session_id))
        return any(fields.get(b"type") == b"client_error" for _, fields in entries)

    await wait_until(error_recorded, "the client error in the session stream")
    held = await control.request(call.session_id, "event", entities=[TRANSCRIPT])
    assert held.result == RATE_LIMITED_RESULT
    # Other commands are not held back.
    assert (await control.request(call.session_id, "pause")).result == APPLIED
    await call.expect("pause")
    await call.close()

    grew = Growth(before, await scrape(gateway))
    assert grew("audiohook_client_errors_total", code="429") == 1
    assert grew("audiohook_rate_limited_total", kind="event") == 1
    assert grew("audiohook_control_commands_total", command="event", result="rate_limited") == 1
    assert grew("audiohook_event_messages_sent_total", integration="test") == 1
