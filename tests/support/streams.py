"""Helpers for tests of the Redis Streams layer: settings, session infos, audio, metrics."""

from __future__ import annotations

import base64
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import REGISTRY
from pydantic import SecretStr

from app.config import Settings
from app.control.plane import APPLIED, ControlCommand
from app.protocol.media import Channel, MediaFormat
from app.publisher.publisher import SessionInfo

TEST_KEY_ID = "k1"
TEST_KEY = bytes(range(32))
TEST_KEYS = {TEST_KEY_ID: TEST_KEY}
TEST_KEYS_JSON = json.dumps({TEST_KEY_ID: base64.b64encode(TEST_KEY).decode()})

STEREO: tuple[Channel, ...] = ("external", "internal")
MONO: tuple[Channel, ...] = ("external",)

StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


def streams_settings(**overrides: Any) -> Settings:
    """Settings with the test encryption key configured, plus `overrides`."""
    values: dict[str, Any] = {"payload_encryption_keys": SecretStr(TEST_KEYS_JSON)}
    values.update(overrides)
    return Settings(**values)


def session_info(
    media: MediaFormat | None = None,
    *,
    integration: str = "test",
    encrypted: bool = False,
    probe: bool = False,
    session_id: str | None = None,
) -> SessionInfo:
    return SessionInfo(
        session_id=session_id or str(uuid.uuid4()),
        correlation_id=str(uuid.uuid4()),
        integration=integration,
        organization_id=str(uuid.uuid4()),
        conversation_id="00000000-0000-0000-0000-000000000000" if probe else str(uuid.uuid4()),
        is_probe=probe,
        media=media,
        encryption_key_id=TEST_KEY_ID if encrypted else None,
    )


def audio_frames(media: MediaFormat, frames: int, samples: int, seed: int = 1) -> list[bytes]:
    """`frames` frames of random bytes, each `samples` samples per channel."""
    rng = random.Random(seed)
    return [rng.randbytes(media.frame_bytes(samples)) for _ in range(frames)]


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of a Prometheus sample (0.0 when it has not been created yet)."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@dataclass
class RecordingTarget:
    """Stands in for the transport's session adapter: records what it was asked to do."""

    result: str = APPLIED
    applied: list[ControlCommand] = field(default_factory=list)

    def apply(self, command: ControlCommand) -> str:
        self.applied.append(command)
        return self.result


async def read_stream(client: Any, key: str) -> StreamEntries:
    """All entries of a stream (XRANGE), typed as the tests use them."""
    return cast(StreamEntries, await client.xrange(key))
