"""AudioHook client that behaves like Genesys Cloud: signed upgrade, open, paced audio,
pings, answers to the server, close; with strict checks of every server message.

Used by the tests, `audiohook-gateway simulate`, `audiohook-gateway probe` and the benchmark.
"""

from app.client.audio import AudioSource, PcmAudio, PcmSource, tone_source, wav_source
from app.client.checks import Finding, ServerMessageChecker
from app.client.pacing import Pacer
from app.client.session import (
    ClientSession,
    Participant,
    SessionConfig,
    SessionResult,
    media_offers,
    run_session,
)
from app.client.upgrade import Endpoint, upgrade_headers

__all__ = [
    "AudioSource",
    "ClientSession",
    "Endpoint",
    "Finding",
    "Pacer",
    "Participant",
    "PcmAudio",
    "PcmSource",
    "ServerMessageChecker",
    "SessionConfig",
    "SessionResult",
    "media_offers",
    "run_session",
    "tone_source",
    "upgrade_headers",
    "wav_source",
]
