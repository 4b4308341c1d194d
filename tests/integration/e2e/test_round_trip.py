"""Issue 4: a WAV streamed into the real gateway comes out of `consume` identical.

PCMU must come back byte for byte, L16 sample for sample, mono and stereo, in plain and with
payload encryption at rest (then the entries in Redis must not hold the plain audio).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Literal

import redis.asyncio

from app.client.audio import wav_source
from app.client.session import run_session
from app.protocol.media import AudioFormat, MediaFormat
from app.publisher.payload_crypto import NONCE_BYTES
from app.redis import keys
from app.tools.consume import reassemble, run_consumer
from tests.integration.e2e.support import (
    assert_same_audio,
    call_config,
    cli_env,
    json_lines,
    make_wav,
    new_consumer_group,
    run_cli,
)
from tests.support.gateway_process import (
    TEST_API_KEY,
    TEST_CLIENT_SECRET,
    TEST_ORG_ID,
    GatewayProcess,
)
from tests.support.session_streams import closed_session_stream
from tests.support.streams import STEREO, TEST_KEY_ID, TEST_KEYS, TEST_KEYS_JSON, read_stream

CASES: list[tuple[AudioFormat, int]] = [("PCMU", 1), ("PCMU", 2), ("L16", 1), ("L16", 2)]
SAMPLES = 9_999  # 1.25 s: six whole 200 ms frames and a short last one


def _layout(channels: int) -> Literal["stereo", "external"]:
    return "stereo" if channels == 2 else "external"


async def test_wavs_streamed_by_the_simulate_cli_come_out_of_consume_identical(
    gateway: GatewayProcess, redis_conn: redis.asyncio.Redis, tmp_path: Path
) -> None:
    group = await new_consumer_group(redis_conn)
    inputs = {}
    for seed, (fmt, channels) in enumerate(CASES):
        path = tmp_path / f"in-{fmt}-{channels}.wav"
        inputs[(fmt, channels)] = (path, make_wav(path, fmt, channels, SAMPLES, seed))

    runs = await asyncio.gather(
        *(
            run_cli(
                [
                    "simulate",
                    "--uri",
                    gateway.ws_url,
                    "--api-key",
                    TEST_API_KEY,
                    "--client-secret",
                    TEST_CLIENT_SECRET,
                    "--org-id",
                    TEST_ORG_ID,
                    "--wav",
                    str(path),
                    "--format",
                    fmt,
                    "--channels",
                    _layout(channels),
                    "--fast",
                    "--json",
                    "--close-timeout",
                    "5",
                ]
            )
            for (fmt, channels), (path, _) in inputs.items()
        )
    )
    session_of = {}
    for ((fmt, channels), _), (code, out, err) in zip(inputs.items(), runs, strict=True):
        assert code == 0, f"simulate failed ({fmt}, {channels} ch): {out}\n{err}"
        (result,) = json_lines(out)
        assert result["ok"] is True
        assert result["selected_media"]["format"] == fmt
        assert len(result["selected_media"]["channels"]) == channels
        assert result["bytes_sent"] == len(inputs[(fmt, channels)][1])
        session_of[(fmt, channels)] = result["session_id"]

    out_dir = tmp_path / "out"
    recordings = await asyncio.wait_for(
        run_consumer(redis_conn, out_dir, group=group, consumer="e2e", keys={},
                     sessions_limit=len(CASES), block_seconds=0.1),
        timeout=20,
    )  # fmt: skip
    assert sorted(r.session_id for r in recordings) == sorted(session_of.values())
    assert all(r.complete for r in recordings)
    for (fmt, channels), (_, data) in inputs.items():
        session_id = session_of[(fmt, channels)]
        assert_same_audio(out_dir / f"{session_id}.wav", fmt, channels, data)
        sidecar = json.loads((out_dir / f"{session_id}.json").read_text())
        assert sidecar["audio"]["gaps"] == []
        assert sidecar["audio"]["missing_entries"] == 0
        assert [e["type"] for e in sidecar["events"]] == ["opened", "closed"]
        assert sidecar["events"][-1]["data"]["frames_lost"] == 0


async def test_encrypted_audio_round_trips_through_the_consume_cli(
    gateway: GatewayProcess, redis_conn: redis.asyncio.Redis, tmp_path: Path
) -> None:
    group = await new_consumer_group(redis_conn)
    inputs = {}
    for seed, (fmt, channels) in enumerate(CASES, start=10):
        path = tmp_path / f"in-{fmt}-{channels}.wav"
        inputs[(fmt, channels)] = (path, make_wav(path, fmt, channels, SAMPLES, seed))
    configs = [
        call_config(
            gateway,
            integration="secure",
            fmt=fmt,
            layout=_layout(channels),
            source=wav_source(path),
        )
        for (fmt, channels), (path, _) in inputs.items()
    ]
    results = await asyncio.gather(*(run_session(config) for config in configs))
    for result in results:
        assert result.ok, [finding.text for finding in result.findings]

    # What Redis holds is ciphertext bound to the key id, never the audio itself.
    for ((fmt, channels), (_, data)), result in zip(inputs.items(), results, strict=True):
        stream = await closed_session_stream(redis_conn, result.session_id)
        assert stream.event_data("opened")["encryption_key_id"] == TEST_KEY_ID
        assert len(stream.audio) == len(result.frames) == 7
        for entry, frame in zip(stream.audio, result.frames, strict=True):
            assert entry[b"kid"] == TEST_KEY_ID.encode()
            assert len(entry[b"nonce"]) == NONCE_BYTES
            assert int(entry[b"offset"]) == frame.offset
            sealed = entry[b"audio"]
            assert len(sealed) == len(frame.data) + 16  # GCM tag
            assert frame.data[:32] not in sealed
        raw_entries = await read_stream(redis_conn, keys.audio_stream(result.session_id))
        media = MediaFormat(fmt, STEREO[:channels])
        assert reassemble(raw_entries, media, session_id=result.session_id) == b""  # no key
        assert reassemble(raw_entries, media, session_id=result.session_id, keys=TEST_KEYS) == data

    out_dir = tmp_path / "out"
    code, out, err = await run_cli(
        ["consume", "--redis-url", gateway.env["AUDIOHOOK_REDIS_URL"], "--output-dir",
         str(out_dir), "--group", group, "--consumer", "cli", "--sessions", str(len(CASES)),
         "--wav-encoding", "mulaw"],
        env=cli_env(PAYLOAD_ENCRYPTION_KEYS=TEST_KEYS_JSON),
    )  # fmt: skip
    assert code == 0, err
    printed = {line["session_id"]: line for line in json_lines(out)}
    assert sorted(printed) == sorted(result.session_id for result in results)
    for ((fmt, channels), (_, data)), result in zip(inputs.items(), results, strict=True):
        assert printed[result.session_id]["complete"] is True
        assert printed[result.session_id]["samples"] == SAMPLES
        assert_same_audio(out_dir / f"{result.session_id}.wav", fmt, channels, data, "mulaw")
        sidecar = json.loads((out_dir / f"{result.session_id}.json").read_text())
        assert sidecar["audio"]["undecryptable"] == 0
        assert sidecar["integration"] == "secure"
        config = next(c for c in configs if c.session_id == result.session_id)
        assert sidecar["conversation_id"] == config.conversation_id
        assert sidecar["correlation_id"] == config.correlation_id
        assert sidecar["organization_id"] == TEST_ORG_ID
