"""What a client session is given and what it gives back.

`SessionConfig` describes one call (ids, participant, media offers, audio source, timeouts);
`SessionResult` records everything that happened in it (server messages with receive times,
frames and messages sent, timings, findings). `ClientSession` (app/client/session.py) runs it.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from app.client.audio import AudioSource
from app.client.checks import Finding
from app.protocol.media import AudioFormat
from app.protocol.messages import NULL_UUID

Layout: TypeAlias = Literal["stereo", "external", "internal", "inverted"]
LAYOUTS: Final[tuple[Layout, ...]] = ("stereo", "external", "internal", "inverted")
_LAYOUT_CHANNELS: Final[dict[str, list[list[str]]]] = {
    # What Genesys offers: stereo first, then each mono channel.
    "stereo": [["external", "internal"], ["external"], ["internal"]],
    "inverted": [["internal", "external"], ["internal"], ["external"]],
    "external": [["external"]],
    "internal": [["internal"]],
}


def media_offers(fmt: AudioFormat = "PCMU", layout: Layout = "stereo") -> list[dict[str, Any]]:
    """The `open.media` offers for a channel layout (default: the three PCMU offers)."""
    return [
        {"type": "audio", "format": fmt, "channels": list(channels), "rate": 8000}
        for channels in _LAYOUT_CHANNELS[layout]
    ]


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Participant:
    id: str = field(default_factory=_new_id)
    ani: str = "+1-555-555-1234"
    ani_name: str = "John Doe"
    dnis: str = "+1-800-555-6789"

    def to_parameter(self) -> dict[str, str]:
        return {"id": self.id, "ani": self.ani, "aniName": self.ani_name, "dnis": self.dnis}


PROBE_PARTICIPANT: Final = Participant(id=NULL_UUID, ani="", ani_name="", dnis="")


@dataclass(slots=True)
class SessionConfig:
    """One call. Timeouts default to the Genesys reference client's; tests shorten them."""

    uri: str
    api_key: str
    client_secret: str | None = None  # base64; None or "" sends an unsigned upgrade
    organization_id: str = field(default_factory=_new_id)
    session_id: str = field(default_factory=_new_id)
    correlation_id: str = field(default_factory=_new_id)
    conversation_id: str = field(default_factory=_new_id)
    participant: Participant = field(default_factory=Participant)
    offers: list[dict[str, Any]] = field(default_factory=media_offers)
    language: str | None = "en-US"
    send_language: bool = True  # False omits the key; True with None sends JSON null
    supported_languages: bool | None = None  # None omits the key
    custom_config: dict[str, Any] | None = None  # None omits the key
    source: AudioSource | None = None  # None: a zero-length stream
    realtime: bool = True
    empty_frame: bool = False  # with no audio, send one zero-length frame (as the probe does)
    connect_timeout: float = 10.0
    open_timeout: float = 5.0
    close_timeout: float = 10.0
    ping_first_delay: float | None = 1.0  # None: never ping
    ping_interval: float = 5.0
    linger_after_closed: float = 0.0  # keep listening this long to catch messages after closed
    report_errors: bool = True  # send `error` messages for violations, as Genesys does
    record_frames: bool = True
    ssl_context: ssl.SSLContext | None = None  # wss only; None: default (public CAs)

    @classmethod
    def probe(cls, uri: str, api_key: str, client_secret: str | None, **kw: Any) -> SessionConfig:
        """The synthetic session Genesys runs to validate an integration's configuration."""
        kw.setdefault("conversation_id", NULL_UUID)
        kw.setdefault("participant", PROBE_PARTICIPANT)
        kw.setdefault("language", None)
        kw.setdefault("custom_config", {})
        kw.setdefault("empty_frame", True)
        return cls(uri=uri, api_key=api_key, client_secret=client_secret, **kw)

    def open_parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "organizationId": self.organization_id,
            "conversationId": self.conversation_id,
            "participant": self.participant.to_parameter(),
            "media": self.offers,
        }
        if self.send_language:
            params["language"] = self.language
        if self.supported_languages is not None:
            params["supportedLanguages"] = self.supported_languages
        if self.custom_config is not None:
            params["customConfig"] = self.custom_config
        return params


class SentFrame(NamedTuple):
    offset: int  # samples per channel before this frame, on the client's timeline
    data: bytes
    sent_at: float  # time.time()


class SentMessage(NamedTuple):
    sent_at: float
    type: str
    seq: int
    text: str


class Received(NamedTuple):
    received_at: float  # time.time()
    text: str | None  # None for a binary frame
    data: bytes | None  # the binary frame
    message: dict[str, Any] | None  # parsed JSON object, if any


@dataclass(slots=True)
class SessionResult:
    session_id: str
    uri: str
    connected: bool = False
    connect_seconds: float | None = None
    http_status: int | None = None
    http_body: str | None = None
    connect_error: str | None = None
    opened: bool = False
    open_seconds: float | None = None  # open sent -> opened received
    selected_media: dict[str, Any] | None = None
    start_paused: bool = False
    discard_to: str | None = None
    supported_languages: list[str] | None = None
    frames_sent: int = 0
    bytes_sent: int = 0
    samples_sent: int = 0
    samples_discarded: int = 0
    frames: list[SentFrame] = field(default_factory=list)
    pings: int = 0
    pongs: int = 0
    rtts: list[float] = field(default_factory=list)
    pauses: int = 0
    resumes: int = 0
    updates: int = 0
    events: list[tuple[float, list[Any]]] = field(default_factory=list)
    disconnect: dict[str, Any] | None = None
    reconnects: list[str | None] = field(default_factory=list)
    close_reason: str | None = None
    closed: bool = False
    close_seconds: float | None = None  # close sent -> closed received
    socket_close: str | None = None
    received: list[Received] = field(default_factory=list)
    sent: list[SentMessage] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.severity == "error"]

    @property
    def event_entities(self) -> list[Any]:
        return [entity for _, entities in self.events for entity in entities]

    @property
    def ok(self) -> bool:
        return self.connected and self.opened and self.closed and not self.errors

    def to_dict(self, *, include_traffic: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "session_id": self.session_id,
            "uri": self.uri,
            "ok": self.ok,
            "connected": self.connected,
            "connect_seconds": self.connect_seconds,
            "http_status": self.http_status,
            "connect_error": self.connect_error,
            "opened": self.opened,
            "open_seconds": self.open_seconds,
            "selected_media": self.selected_media,
            "start_paused": self.start_paused,
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "pings": self.pings,
            "pongs": self.pongs,
            "rtts": self.rtts,
            "events": len(self.events),
            "disconnect": self.disconnect,
            "reconnects": self.reconnects,
            "close_reason": self.close_reason,
            "closed": self.closed,
            "close_seconds": self.close_seconds,
            "socket_close": self.socket_close,
            "findings": [finding.to_dict() for finding in self.findings],
        }
        if include_traffic:
            out["received"] = [r.text for r in self.received if r.text is not None]
            out["sent"] = [m.text for m in self.sent]
        return out
