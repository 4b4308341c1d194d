"""Pieces of the end-to-end tests: gateway processes, health checks, test WAVs, Redis groups,
the CLI tools as subprocesses and a minimal wire-level client for deliberate misbehaviour."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import struct
import subprocess
import sys
import uuid
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from redis.exceptions import ResponseError
from websockets.asyncio.client import ClientConnection, connect

from app.client.audio import PcmAudio, PcmSource, write_wav
from app.client.counters import ClientCounters
from app.client.session import SessionConfig, media_offers
from app.client.upgrade import Endpoint, upgrade_headers
from app.protocol.media import AudioFormat
from app.redis import keys
from app.redis.client import RedisClient
from app.tools.wav import (
    WAVE_FORMAT_MULAW,
    WAVE_FORMAT_PCM,
    read_wav,
    ulaw_decode_byte,
    ulaw_encode_sample,
)
from tests.support.gateway_process import (
    TEST_API_KEY,
    TEST_CLIENT_SECRET,
    TEST_INTEGRATION,
    TEST_ORG_ID,
    GatewayProcess,
)
from tests.support.gateway_process import running_gateway as support_gateway
from tests.support.streams import TEST_KEY_ID, TEST_KEYS_JSON

REPO_ROOT = Path(__file__).resolve().parents[3]

# A second integration whose audio is stored encrypted (key `TEST_KEY_ID`).
SECURE_API_KEY = "secure-integration-key"
SECURE_CLIENT_SECRET = base64.b64encode(b"secure-integration-secret-32byte").decode()
INTEGRATIONS: list[dict[str, object]] = [
    TEST_INTEGRATION,
    {
        "name": "secure",
        "api_key": SECURE_API_KEY,
        "client_secrets": [SECURE_CLIENT_SECRET],
        "encryption_key_id": TEST_KEY_ID,
    },
]
CREDENTIALS = {
    "test": (TEST_API_KEY, TEST_CLIENT_SECRET),
    "secure": (SECURE_API_KEY, SECURE_CLIENT_SECRET),
}
BASE_SETTINGS = {
    "PAYLOAD_ENCRYPTION_KEYS": TEST_KEYS_JSON,
    # Every test connects from 127.0.0.1: keep the per-source upgrade limit out of the way.
    "UPGRADES_PER_SECOND_PER_SOURCE": "100000",
    "UPGRADE_BURST_PER_SOURCE": "100000",
    "CONTROL_SESSION_TTL_SECONDS": "5",
    "CLOSE_TIMEOUT_SECONDS": "3",
}


@contextlib.contextmanager
def running_gateway(
    redis_url: str,
    log_path: Path,
    replica_id: str,
    settings: Mapping[str, str] | None = None,
) -> Iterator[GatewayProcess]:
    """A gateway child process named `replica_id`, with this suite's base settings and
    integrations."""
    with support_gateway(
        redis_url,
        log_path,
        {"REPLICA_ID": replica_id, **(settings or {})},
        INTEGRATIONS,
        base_settings=BASE_SETTINGS,
    ) as process:
        yield process


def call_config(
    gateway: GatewayProcess,
    *,
    integration: str = "test",
    fmt: AudioFormat = "PCMU",
    layout: Literal["stereo", "external"] = "stereo",
    **kwargs: Any,
) -> SessionConfig:
    """A Genesys-like call to `gateway` with short timeouts; `kwargs` set other fields."""
    api_key, secret = CREDENTIALS[integration]
    options: dict[str, Any] = {
        "organization_id": TEST_ORG_ID,
        "offers": media_offers(fmt, layout),
        "realtime": False,
        "ping_first_delay": None,
        "open_timeout": 5.0,
        "close_timeout": 5.0,
    }
    options.update(kwargs)
    return SessionConfig(uri=gateway.ws_url, api_key=api_key, client_secret=secret, **options)


# --- health -----------------------------------------------------------------------------------


async def http_status(gateway: GatewayProcess, path: str) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"{gateway.metrics_url}{path}")).status_code


# --- audio files ------------------------------------------------------------------------------

# µ-law codes that survive decode -> encode unchanged (all but 0x7F, "negative zero"): the
# simulator decodes a WAV to linear samples and encodes them again for the wire.
STABLE_ULAW = bytes(b for b in range(256) if ulaw_encode_sample(ulaw_decode_byte(b)) == b)


def make_wav(path: Path, fmt: AudioFormat, channels: int, samples: int, seed: int) -> bytes:
    """Write a WAV of random audio; returns its sample data (interleaved, as stored)."""
    rng = random.Random(seed)
    if fmt == "PCMU":
        data = bytes(rng.choice(STABLE_ULAW) for _ in range(samples * channels))
    else:
        data = rng.randbytes(samples * channels * 2)
    write_wav(path, data, encoding=fmt, channels=channels)
    return data


def noise_source(seconds: float, seed: int) -> PcmSource:
    """Random audio: unlike a tone, every frame differs, so order is visible in the output."""
    rng = random.Random(seed)
    count = round(seconds * 8000)
    external, internal = (
        array("h", (rng.randint(-20000, 20000) for _ in range(count))) for _ in range(2)
    )
    return PcmSource(PcmAudio(external, internal))


def l16_samples(data: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(data) // 2}h", data)


def assert_same_audio(
    wav_path: Path,
    fmt: AudioFormat,
    channels: int,
    expected: bytes,
    encoding: Literal["pcm16", "mulaw"] = "pcm16",
) -> None:
    """The consumer's WAV holds exactly the input's audio: 16-bit PCM (PCMU expanded by the
    G.711 table), or PCMU as it came when `encoding` is "mulaw"."""
    out = read_wav(wav_path)
    assert (out.channels, out.rate) == (channels, 8000)
    if fmt == "PCMU" and encoding == "pcm16":
        assert (out.format_tag, out.bits_per_sample) == (WAVE_FORMAT_PCM, 16)
        assert l16_samples(out.data) == tuple(ulaw_decode_byte(b) for b in expected)
    elif fmt == "PCMU":
        assert (out.format_tag, out.bits_per_sample) == (WAVE_FORMAT_MULAW, 8)
        assert len(out.data) == len(expected)
        assert out.data == expected
    else:
        assert (out.format_tag, out.bits_per_sample) == (WAVE_FORMAT_PCM, 16)
        assert len(out.data) == len(expected)
        assert l16_samples(out.data) == l16_samples(expected)


# --- Redis ------------------------------------------------------------------------------------


async def new_consumer_group(client: RedisClient) -> str:
    """A consumer group on the events stream that sees only sessions from now on."""
    group = f"e2e-{uuid.uuid4().hex[:8]}"
    try:
        await client.xgroup_create(keys.EVENTS_STREAM, group, id="$", mkstream=True)
    except ResponseError as exc:  # pragma: no cover - the name is fresh
        raise AssertionError(f"cannot create group {group}") from exc
    return group


# --- the CLI tools ----------------------------------------------------------------------------


def cli_env(**settings: str) -> dict[str, str]:
    """The environment for a CLI subprocess: no AUDIOHOOK_* from outside, `settings` added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOHOOK_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update({f"AUDIOHOOK_{name}": value for name, value in settings.items()})
    return env


async def run_cli(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> tuple[int, str, str]:
    """`audiohook-gateway <args>` as a child process: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        *args,
        env=dict(env or cli_env()),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- a wire-level client ----------------------------------------------------------------------


@dataclass
class WireCall:
    """One WebSocket driven message by message: for deliberate protocol errors and for calls
    whose exact upgrade headers a test needs to know."""

    ws: ClientConnection
    session_id: str
    correlation_id: str
    headers: dict[str, str]
    counters: ClientCounters = field(init=False)  # seq, server seq, position

    def __post_init__(self) -> None:
        self.counters = ClientCounters(self.session_id)

    @classmethod
    async def connect(
        cls,
        uri: str,
        *,
        api_key: str = TEST_API_KEY,
        client_secret: str = TEST_CLIENT_SECRET,
        created: int | None = None,
    ) -> WireCall:
        """Dial with signed AudioHook headers (`created` backdates the signature)."""
        session_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
        headers = upgrade_headers(
            Endpoint.parse(uri),
            api_key=api_key,
            client_secret=client_secret,
            organization_id=TEST_ORG_ID,
            session_id=session_id,
            correlation_id=correlation_id,
            created=created,
        )
        ws = await connect(uri, additional_headers=headers, open_timeout=5, ping_interval=None)
        return cls(ws, session_id, correlation_id, headers)

    async def send(
        self, msg_type: str, parameters: Mapping[str, Any], *, seq: int | None = None
    ) -> None:
        """Send a message with the next seq, or with `seq` (then the count does not move)."""
        await self.ws.send(self.counters.message(msg_type, parameters, seq=seq))

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            text = await self.ws.recv()
        message = json.loads(text)
        assert isinstance(message, dict)
        self.counters.server_seq = int(message["seq"])
        return message

    async def expect(self, msg_type: str) -> dict[str, Any]:
        message = await self.receive()
        assert message["type"] == msg_type, message
        parameters = message["parameters"]
        assert isinstance(parameters, dict)
        return parameters

    async def open(
        self,
        conversation_id: str | None = None,
        offers: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Send `open` and return the parameters of `opened`."""
        await self.send_open(conversation_id, offers)
        return await self.expect("opened")

    async def send_open(
        self,
        conversation_id: str | None = None,
        offers: list[dict[str, Any]] | None = None,
    ) -> None:
        await self.send(
            "open",
            {
                "organizationId": TEST_ORG_ID,
                "conversationId": conversation_id or str(uuid.uuid4()),
                "participant": {
                    "id": str(uuid.uuid4()),
                    "ani": "+1-555-555-1234",
                    "aniName": "John Doe",
                    "dnis": "+1-800-555-6789",
                },
                "media": offers or media_offers("PCMU", "stereo"),
                "language": "en-US",
            },
        )

    async def audio(self, frame: bytes, samples: int) -> None:
        await self.ws.send(frame)
        self.counters.position += samples

    async def close(self, reason: str = "end") -> None:
        await self.send("close", {"reason": reason})
        await self.expect("closed")
        await self.ws.close()
