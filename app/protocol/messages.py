"""AudioHook v2 messages: parse and validate client messages, serialise server messages.

Parsing is split in two steps so the session can apply the protocol's check order:
`parse_envelope` (size, JSON, envelope shape), then the session checks seq/serverseq/id,
then `parse_parameters` (type and parameters).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, TypeAlias, TypeGuard

import orjson

from app.protocol.media import SAMPLE_RATE

PROTOCOL_VERSION: Final = "2"
MAX_TEXT_CHARS: Final = 65535
NULL_UUID: Final = "00000000-0000-0000-0000-000000000000"
_MAX_DURATION_CHARS: Final = 40  # far beyond any real duration; bounds int() work

_UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-5][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
    r"|00000000-0000-0000-0000-000000000000"
)
_LANGUAGE_RE: Final = re.compile(r"[a-z]{2,3}-[A-Za-z]{2,3}")

ViolationKind: TypeAlias = Literal[
    "too_large",
    "invalid_json",
    "malformed_message",
    "bad_seq",
    "bad_serverseq",
    "id_mismatch",
    "unknown_type",
    "bad_parameters",
    "audio_not_allowed",
    "bad_frame_size",
    "frame_too_large",
    "rate_exceeded",
]
CloseReason: TypeAlias = Literal["end", "error", "disconnect", "reconnect"]
DisconnectReason: TypeAlias = Literal["completed", "unauthorized", "error"]
ClientMessageType: TypeAlias = Literal[
    "open", "close", "ping", "paused", "resumed", "update", "discarded", "error"
]
ServerMessageType: TypeAlias = Literal[
    "opened",
    "closed",
    "pong",
    "pause",
    "resume",
    "updated",
    "disconnect",
    "reconnect",
    "event",
]

CLOSE_REASONS: Final[frozenset[str]] = frozenset({"end", "error", "disconnect", "reconnect"})
DISCONNECT_REASONS: Final[frozenset[str]] = frozenset({"completed", "unauthorized", "error"})


class ProtocolError(Exception):
    """A client protocol violation: `kind` is a metric label, `info` a short client-facing text."""

    def __init__(self, kind: ViolationKind, info: str) -> None:
        super().__init__(info)
        self.kind: ViolationKind = kind
        self.info = info


# --- formats -----------------------------------------------------------------------------


def is_uuid(value: object) -> TypeGuard[str]:
    """True for a UUID as the protocol accepts it (versions 1-5, or the null UUID)."""
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def is_language(value: object) -> TypeGuard[str]:
    """True for a language code such as `en-US` (a bare `en` is not valid)."""
    return isinstance(value, str) and _LANGUAGE_RE.fullmatch(value) is not None


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_duration(text: str) -> int:
    """Parse `PT<seconds>S` into samples at 8000 Hz, rounded half up. ValueError if invalid."""
    if not (
        isinstance(text, str)
        and len(text) <= _MAX_DURATION_CHARS
        and text.startswith("PT")
        and text.endswith("S")
    ):
        raise ValueError("invalid duration")
    whole, dot, fraction = text[2:-1].partition(".")
    if dot:
        # `PT.5S` is valid, `PT1.S` is not; digits after the dot are required.
        if not _is_digits(fraction) or (whole and not _is_digits(whole)):
            raise ValueError("invalid duration")
    elif not _is_digits(whole):
        raise ValueError("invalid duration")
    scale = 10 ** len(fraction)
    numerator = int(whole or "0") * scale + int(fraction or "0")
    samples: int = (numerator * SAMPLE_RATE * 2 + scale) // (2 * scale)
    return samples


def format_duration(samples: int) -> str:
    """Shortest decimal `PT<seconds>S` for a sample count at 8000 Hz (exact: 1/8000 = 0.000125)."""
    if samples < 0:
        raise ValueError("duration must not be negative")
    whole, micro = divmod(samples * 125, 1_000_000)
    if micro == 0:
        return f"PT{whole}S"
    return f"PT{whole}.{micro:06d}".rstrip("0") + "S"


def format_seconds(seconds: Decimal | int | float) -> str:
    """Shortest decimal `PT<seconds>S` for a non-negative number of seconds."""
    value = Decimal(repr(seconds)) if isinstance(seconds, float) else Decimal(seconds)
    if not value.is_finite() or value < 0:
        raise ValueError("duration must be a finite, non-negative number")
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"PT{text or '0'}S"


def _is_seq(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0  # bool is excluded by the exact type check


# --- client messages ---------------------------------------------------------------------


class ClientEnvelope:
    """The checked envelope of a client message; `position` is in samples.

    A plain class: a frozen dataclass's __init__ is interpreted code even in the compiled
    build (it sets each field through object.__setattr__), and every message builds one."""

    __slots__ = ("id", "parameters", "position", "seq", "serverseq", "type")

    def __init__(
        self,
        msg_id: str,
        msg_type: str,
        seq: int,
        serverseq: int,
        position: int,
        parameters: dict[str, Any],
    ) -> None:
        self.id: Final = msg_id
        self.type: Final = msg_type
        self.seq: Final = seq
        self.serverseq: Final = serverseq
        self.position: Final = position
        self.parameters: Final = parameters


@dataclass(frozen=True, slots=True)
class OpenParameters:
    organization_id: str
    conversation_id: str
    participant: dict[str, Any]
    media: list[dict[str, Any]]
    language: str | None
    supported_languages: bool
    continued_sessions: list[dict[str, Any]]
    custom_config: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class CloseParameters:
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class PingParameters:
    rtt_samples: int | None


@dataclass(frozen=True, slots=True)
class PausedParameters:
    pass


@dataclass(frozen=True, slots=True)
class ResumedParameters:
    start_samples: int
    discarded_samples: int


@dataclass(frozen=True, slots=True)
class DiscardedParameters:
    start_samples: int
    discarded_samples: int


@dataclass(frozen=True, slots=True)
class UpdateParameters:
    language: str


@dataclass(frozen=True, slots=True)
class ErrorParameters:
    code: int
    message: str
    retry_after_samples: int | None


ClientParameters: TypeAlias = (
    OpenParameters
    | CloseParameters
    | PingParameters
    | PausedParameters
    | ResumedParameters
    | DiscardedParameters
    | UpdateParameters
    | ErrorParameters
)


@dataclass(frozen=True, slots=True)
class ClientMessage:
    envelope: ClientEnvelope
    parameters: ClientParameters


_MALFORMED: Final = "Client Error: Not a well-formed client message"


def parse_envelope(text: str) -> ClientEnvelope:
    """Steps 1-3 of the inbound pipeline: size, JSON, envelope shape."""
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError("too_large", "Client Error: Message too large")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("invalid_json", "Client Error: Message is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("malformed_message", _MALFORMED)
    msg_id = data.get("id")
    msg_type = data.get("type")
    seq = data.get("seq")
    serverseq = data.get("serverseq")
    position = data.get("position")
    parameters = data.get("parameters")
    if (
        data.get("version") != PROTOCOL_VERSION
        or not is_uuid(msg_id)
        or not isinstance(msg_type, str)
        or not _is_seq(seq)
        or not _is_seq(serverseq)
        or not isinstance(position, str)
        or not isinstance(parameters, dict)
    ):
        raise ProtocolError("malformed_message", _MALFORMED)
    try:
        position_samples = parse_duration(position)
    except ValueError:
        raise ProtocolError("malformed_message", _MALFORMED) from None
    return ClientEnvelope(msg_id, msg_type, seq, serverseq, position_samples, parameters)


def _type_label(msg_type: str) -> str:
    if len(msg_type) <= 32 and msg_type.isascii() and msg_type.isprintable():
        return f"'{msg_type}'"
    return "Message type"


def _bad(msg_type: str, field: str) -> ProtocolError:
    return ProtocolError("bad_parameters", f"Client Error: Invalid {msg_type} parameter '{field}'")


def _optional(params: Mapping[str, Any], key: str) -> Any:
    """An optional parameter; JSON null counts as absent."""
    return params.get(key)


def _duration(msg_type: str, params: Mapping[str, Any], key: str, *, required: bool) -> int | None:
    value = params.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _bad(msg_type, key)
    try:
        return parse_duration(value)
    except ValueError:
        raise _bad(msg_type, key) from None


def _required_duration(msg_type: str, params: Mapping[str, Any], key: str) -> int:
    value = _duration(msg_type, params, key, required=True)
    assert value is not None
    return value


def _is_media_offer(value: object) -> bool:
    """Shape of a MediaParameter; whether its format is usable is the media policy's call."""
    if not isinstance(value, dict):
        return False
    channels = value.get("channels")
    rate = value.get("rate")
    return (
        isinstance(value.get("type"), str)
        and isinstance(value.get("format"), str)
        and isinstance(channels, list)
        and 1 <= len(channels) <= 2
        and all(isinstance(channel, str) for channel in channels)
        and type(rate) is int
        and rate > 0
    )


def _parse_participant(params: Mapping[str, Any]) -> dict[str, Any]:
    participant = params.get("participant")
    if not isinstance(participant, dict) or not is_uuid(participant.get("id")):
        raise _bad("open", "participant")
    for key in ("ani", "aniName", "dnis"):
        value = participant.get(key)
        # Caller-id fields are empty strings on probes; a null is tolerated and read as "".
        if value is None:
            participant = {**participant, key: ""}
        elif not isinstance(value, str):
            raise _bad("open", f"participant.{key}")
    return participant


def _parse_continued_sessions(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    value = _optional(params, "continuedSessions")
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("open", "continuedSessions")
    for item in value:
        if (
            not isinstance(item, dict)
            or not is_uuid(item.get("id"))
            or not _is_seq(item.get("serverseq"))
            or not _is_seq(item.get("clientseq"))
        ):
            raise _bad("open", "continuedSessions")
    return value


def _parse_open(params: Mapping[str, Any]) -> OpenParameters:
    organization_id = params.get("organizationId")
    if not is_uuid(organization_id):
        raise _bad("open", "organizationId")
    conversation_id = params.get("conversationId")
    if not is_uuid(conversation_id):
        raise _bad("open", "conversationId")
    participant = _parse_participant(params)
    media = params.get("media")
    if not isinstance(media, list) or not all(_is_media_offer(offer) for offer in media):
        raise _bad("open", "media")
    language = _optional(params, "language")
    if language is not None and not is_language(language):
        raise _bad("open", "language")
    supported_languages = _optional(params, "supportedLanguages")
    if supported_languages is not None and not isinstance(supported_languages, bool):
        raise _bad("open", "supportedLanguages")
    custom_config = _optional(params, "customConfig")
    if custom_config is not None and not isinstance(custom_config, dict):
        raise _bad("open", "customConfig")
    return OpenParameters(
        organization_id=organization_id,
        conversation_id=conversation_id,
        participant=participant,
        media=media,
        language=language,
        supported_languages=supported_languages is True,
        continued_sessions=_parse_continued_sessions(params),
        custom_config=custom_config,
    )


def _parse_close(params: Mapping[str, Any]) -> CloseParameters:
    reason = params.get("reason")
    if reason not in CLOSE_REASONS:
        raise _bad("close", "reason")
    return CloseParameters(reason)


def _parse_ping(params: Mapping[str, Any]) -> PingParameters:
    return PingParameters(_duration("ping", params, "rtt", required=False))


def _parse_paused(params: Mapping[str, Any]) -> PausedParameters:
    return PausedParameters()


def _parse_resumed(params: Mapping[str, Any]) -> ResumedParameters:
    return ResumedParameters(
        _required_duration("resumed", params, "start"),
        _required_duration("resumed", params, "discarded"),
    )


def _parse_discarded(params: Mapping[str, Any]) -> DiscardedParameters:
    return DiscardedParameters(
        _required_duration("discarded", params, "start"),
        _required_duration("discarded", params, "discarded"),
    )


def _parse_update(params: Mapping[str, Any]) -> UpdateParameters:
    language = params.get("language")
    if not is_language(language):
        raise _bad("update", "language")
    return UpdateParameters(language)


def _parse_error(params: Mapping[str, Any]) -> ErrorParameters:
    code = params.get("code")
    if type(code) is not int or not 400 <= code <= 9999:
        raise _bad("error", "code")
    message = params.get("message")
    if not isinstance(message, str):
        raise _bad("error", "message")
    return ErrorParameters(code, message, _duration("error", params, "retryAfter", required=False))


_PARSERS: Final[dict[str, Callable[[Mapping[str, Any]], ClientParameters]]] = {
    "open": _parse_open,
    "close": _parse_close,
    "ping": _parse_ping,
    "paused": _parse_paused,
    "resumed": _parse_resumed,
    "update": _parse_update,
    "discarded": _parse_discarded,
    "error": _parse_error,
}


def parse_parameters(msg_type: str, parameters: Mapping[str, Any]) -> ClientParameters:
    """Step 8 of the inbound pipeline: known type and valid parameters (extra keys tolerated)."""
    parser = _PARSERS.get(msg_type)
    if parser is None:
        raise ProtocolError(
            "unknown_type",
            f"Client Error: {_type_label(msg_type)} is not a supported client message",
        )
    return parser(parameters)


def parse_client_message(text: str) -> ClientMessage:
    """Envelope and parameters in one step (no sequence or session checks)."""
    envelope = parse_envelope(text)
    return ClientMessage(envelope, parse_parameters(envelope.type, envelope.parameters))


def encode_client_message(
    msg_type: str,
    session_id: str,
    seq: int,
    serverseq: int,
    position_samples: int,
    parameters: Mapping[str, Any],
) -> str:
    """Serialise a client message (for clients and tests)."""
    message = {
        "version": PROTOCOL_VERSION,
        "type": msg_type,
        "id": session_id,
        "seq": seq,
        "serverseq": serverseq,
        "position": format_duration(position_samples),
        "parameters": parameters,
    }
    return orjson.dumps(message).decode()


# --- server messages ---------------------------------------------------------------------


def encode_server_message(
    msg_type: ServerMessageType,
    session_id: str,
    seq: int,
    clientseq: int,
    parameters: Mapping[str, Any],
) -> str:
    """Serialise a server message. ValueError if the parameters are not JSON-serialisable."""
    message = {
        "version": PROTOCOL_VERSION,
        "type": msg_type,
        "id": session_id,
        "seq": seq,
        "clientseq": clientseq,
        "parameters": parameters,
    }
    try:
        return orjson.dumps(message).decode()
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"parameters are not JSON-serialisable: {exc}") from None


def opened_parameters(
    media: Mapping[str, Any] | None,
    start_paused: bool,
    supported_languages: Sequence[str] | None = None,
    discard_to_samples: int | None = None,
) -> dict[str, Any]:
    """`opened` parameters: `media` is the selected offer verbatim, or None for `[]`."""
    parameters: dict[str, Any] = {
        "media": [] if media is None else [media],
        "startPaused": start_paused,
    }
    if discard_to_samples is not None:
        parameters["discardTo"] = format_duration(discard_to_samples)
    if supported_languages is not None:
        parameters["supportedLanguages"] = list(supported_languages)
    return parameters


def disconnect_parameters(reason: DisconnectReason, info: str | None) -> dict[str, Any]:
    if reason not in DISCONNECT_REASONS:
        raise ValueError(f"invalid disconnect reason {reason!r}")
    return {"reason": reason} if info is None else {"reason": reason, "info": info}


def reconnect_parameters(info: str | None) -> dict[str, Any]:
    return {} if info is None else {"info": info}


def event_parameters(entities: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`event` parameters; entities must be a non-empty list of {type: str, data: any JSON}."""
    if isinstance(entities, str | bytes) or not entities:
        raise ValueError("event entities must be a non-empty list")
    for entity in entities:
        if not isinstance(entity, Mapping):
            raise ValueError("each event entity must be an object")
        if not isinstance(entity.get("type"), str) or "data" not in entity:
            raise ValueError("each event entity needs a string 'type' and a 'data' field")
    return {"entities": list(entities)}
