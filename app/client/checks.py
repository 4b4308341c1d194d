"""Checks of server messages as strict as the Genesys client's (docs/protocol.md §6-7).

Sans-I/O: the session tells the checker what it sent (`sent`) and hands it every frame it
receives; the checker tracks the client's view of the session and returns findings, each
naming the field at fault, what was expected, what arrived and how to fix the server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from app.client.counters import ClientCounters
from app.protocol.messages import (
    DISCONNECT_REASONS,
    MAX_TEXT_CHARS,
    PROTOCOL_VERSION,
    is_language,
    is_uuid,
    parse_duration,
)

Severity: TypeAlias = Literal["error", "warning"]
Phase: TypeAlias = Literal["connecting", "opening", "open", "closing", "closed"]

SERVER_TYPES: Final = frozenset(
    {"opened", "closed", "pong", "pause", "resume", "updated", "disconnect", "reconnect", "event"}
)
_MEDIA_KEYS: Final = ("type", "format", "channels", "rate")


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem with the server's behaviour.

    `error_code` is the code the Genesys client reports in its `error` message; `fatal`
    means that client gives the session up (`error`, then `close` with reason `error`).
    """

    rule: str
    field: str
    message: str
    hint: str
    expected: Any = None
    actual: Any = None
    severity: Severity = "error"
    error_code: int | None = None
    fatal: bool = False

    @property
    def text(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "field": self.field,
            "message": self.message,
            "hint": self.hint,
            "expected": self.expected,
            "actual": self.actual,
            "severity": self.severity,
            "error_code": self.error_code,
            "fatal": self.fatal,
        }


@dataclass(slots=True)
class Checked:
    """A received text frame: the decoded message (None if unusable) and what was wrong.

    `accepted` is False when the Genesys client would not act on the message.
    """

    message: dict[str, Any] | None
    findings: list[Finding] = field(default_factory=list)
    accepted: bool = True

    @property
    def type(self) -> str | None:
        msg_type = None if self.message is None else self.message.get("type")
        return msg_type if isinstance(msg_type, str) else None

    @property
    def parameters(self) -> dict[str, Any]:
        params = None if self.message is None else self.message.get("parameters")
        return params if isinstance(params, dict) else {}


def _show(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def _is_seq(value: object) -> bool:
    return type(value) is int and value >= 0


def _is_duration(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_duration(value)
    except ValueError:
        return False
    return True


def describe_media(media: Mapping[str, Any]) -> str:
    channels = media.get("channels")
    names = ",".join(map(str, channels)) if isinstance(channels, list) else _show(channels)
    return f"{media.get('format')}[{names}]@{media.get('rate')}"


class ServerMessageChecker:
    """The client's view of one session, used to judge each server message."""

    def __init__(
        self,
        session_id: str,
        offers: Sequence[Mapping[str, Any]],
        *,
        supported_languages_requested: bool = False,
        counters: ClientCounters | None = None,
    ) -> None:
        self.session_id = session_id
        # The last server seq seen is the client's `server_seq`: shared with the session
        # that numbers its messages with these counters (a fresh set when none is given).
        self.counters = ClientCounters(session_id) if counters is None else counters
        self.offers = [dict(offer) for offer in offers]
        self.supported_languages_requested = supported_languages_requested
        self.phase: Phase = "connecting"
        self.client_seq = 0  # last client seq sent
        self.clientseq_seen = 0  # highest clientseq the server reported
        self.open_seq: int | None = None
        self.close_seq: int | None = None
        self.pending_ping_seq: int | None = None
        self.selected_media: dict[str, Any] | None = None
        self.gave_up_opening = False  # the client stopped waiting for `opened`

    @property
    def server_seq(self) -> int:
        """The last server seq seen."""
        return self.counters.server_seq

    @server_seq.setter
    def server_seq(self, value: int) -> None:
        self.counters.server_seq = value

    # --- what the client did ---------------------------------------------------------------

    def sent(self, msg_type: str, seq: int) -> None:
        self.client_seq = seq
        if msg_type == "open":
            self.open_seq = seq
            self.phase = "opening"
        elif msg_type == "close" and self.phase != "closed":
            self.close_seq = seq
            if self.phase == "opening":
                self.gave_up_opening = True
            self.phase = "closing"
        elif msg_type == "ping":
            self.pending_ping_seq = seq

    # --- what the server sent ---------------------------------------------------------------

    def check_binary(self, data: bytes) -> list[Finding]:
        """Servers never send binary frames (Genesys client error 415)."""
        hint = "a server must never send binary frames; send JSON messages as text frames"
        what = f"a binary frame of {len(data)} bytes"
        try:
            decoded = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            decoded = None
        if isinstance(decoded, dict) and isinstance(decoded.get("type"), str):
            what += f" holding a JSON '{decoded['type']}' message"
            hint = "send JSON messages as WebSocket text frames, not binary frames"
        return [
            Finding(
                "binary-frame",
                "frame",
                f"the server sent {what}",
                hint,
                expected="text frame",
                actual="binary frame",
                error_code=415,
                fatal=True,
            )
        ]

    def check_text(self, text: str) -> Checked:
        if len(text) > MAX_TEXT_CHARS:
            return self._reject(
                "too-large",
                "message",
                f"a text message of {len(text)} characters",
                f"server messages may be at most {MAX_TEXT_CHARS} characters",
                413,
            )
        try:
            message = json.loads(text)
        except ValueError:
            return self._reject(
                "invalid-json", "message", "a text frame that is not JSON", _show(text[:80]), 400
            )
        if not isinstance(message, dict):
            return self._reject(
                "not-an-object",
                "message",
                "a JSON value that is not an object",
                "every AudioHook message is a JSON object",
                400,
            )
        return self._check_message(message)

    def _reject(self, rule: str, field_name: str, what: str, hint: str, code: int) -> Checked:
        finding = Finding(
            rule, field_name, f"the server sent {what}", hint, error_code=code, fatal=True
        )
        return Checked(None, [finding], accepted=False)

    def _check_message(self, message: dict[str, Any]) -> Checked:
        checked = Checked(message)
        msg_type = message.get("type")
        name = msg_type if isinstance(msg_type, str) and msg_type in SERVER_TYPES else "message"
        self._check_envelope(checked, name)
        if not checked.accepted:
            return checked
        assert isinstance(msg_type, str)
        if self.phase == "closed":
            checked.findings.append(
                Finding(
                    "after-closed",
                    f"{msg_type}",
                    f"the server sent '{msg_type}' after 'closed'",
                    "nothing may follow 'closed'; finish all events before answering close",
                    error_code=409,
                )
            )
            checked.accepted = False
            return checked
        self._check_phase(checked, msg_type)
        if checked.accepted:
            self._check_parameters(checked, msg_type, checked.parameters)
        self._check_clientseq(checked, msg_type, message["clientseq"])
        if checked.accepted:
            self._advance(msg_type, checked.parameters)
        return checked

    def _check_envelope(self, checked: Checked, name: str) -> None:
        message = checked.message
        assert message is not None
        findings = checked.findings

        def bad(rule: str, key: str, hint: str, expected: Any, code: int = 400) -> None:
            actual = message.get(key, "<missing>")
            what = "is missing" if key not in message else f"is {_show(actual)}"
            findings.append(
                Finding(
                    rule,
                    f"{name}.{key}",
                    f"{name}.{key} {what}, expected {expected}",
                    hint,
                    expected=expected,
                    actual=message.get(key),
                    error_code=code,
                    fatal=True,
                )
            )
            checked.accepted = False

        msg_type = message.get("type")
        if not isinstance(msg_type, str):
            bad("type", "type", "every message names its type", "a string")
        elif msg_type not in SERVER_TYPES:
            bad(
                "unknown-type",
                "type",
                "not a server message type",
                "one of " + ", ".join(sorted(SERVER_TYPES)),
            )
        if message.get("version") != PROTOCOL_VERSION:
            bad("version", "version", 'the protocol version is the string "2"', '"2"')
        if message.get("id") != self.session_id:
            bad(
                "id",
                "id",
                "every message carries the session id from the Audiohook-Session-Id header",
                self.session_id,
            )
        if not isinstance(message.get("parameters"), dict):
            bad(
                "parameters",
                "parameters",
                "every message needs a parameters object; use {} when empty",
                "an object",
            )
        if not _is_seq(message.get("clientseq")):
            bad(
                "clientseq",
                "clientseq",
                "clientseq is the seq of the last client message processed",
                "an integer >= 0",
            )
        seq = message.get("seq")
        if not _is_seq(seq):
            bad("seq", "seq", "seq counts server messages: 1, 2, 3, ...", "an integer >= 0", 500)
            return
        assert isinstance(seq, int)
        expected = self.server_seq + 1
        self.server_seq = seq  # judge the next message against this one, not the last good one
        if seq != expected:
            findings.append(
                Finding(
                    "seq",
                    f"{name}.seq",
                    f"{name}.seq is {seq}, expected {expected}",
                    "server seq starts at 1 and grows by exactly 1 with every message of any type",
                    expected=expected,
                    actual=seq,
                    error_code=500,
                    fatal=True,
                )
            )
            checked.accepted = False

    def _phase_error(self, checked: Checked, msg_type: str, message: str, hint: str) -> None:
        checked.findings.append(
            Finding("phase", msg_type, message, hint, error_code=409, fatal=True)
        )
        checked.accepted = False

    def _check_phase(self, checked: Checked, msg_type: str) -> None:
        phase = self.phase
        if msg_type == "opened" and phase != "opening":
            if self.gave_up_opening:
                checked.findings.append(
                    Finding(
                        "opened-late",
                        "opened",
                        "'opened' arrived after the client had given up waiting for it",
                        "answer open within 5 s; Genesys closes the session otherwise",
                        error_code=409,
                    )
                )
                checked.accepted = False
                return
            self._phase_error(
                checked,
                msg_type,
                "the server sent 'opened' when no open was pending",
                "send 'opened' exactly once, in answer to 'open'",
            )
        elif msg_type == "closed" and phase != "closing":
            self._phase_error(
                checked,
                msg_type,
                "the server sent 'closed' although the client had not sent 'close'",
                "send 'closed' only in answer to 'close' (use 'disconnect' to end a session)",
            )
        elif msg_type in ("pause", "resume") and phase in ("connecting", "opening"):
            self._phase_error(
                checked,
                msg_type,
                f"the server sent '{msg_type}' before 'opened'",
                "to start paused, set opened.startPaused instead",
            )
        elif msg_type == "event" and phase in ("connecting", "opening"):
            self._phase_error(
                checked,
                msg_type,
                "the server sent 'event' before 'opened'",
                "send events only after 'opened'",
            )
        elif msg_type == "pong" and self.pending_ping_seq is None:
            checked.findings.append(
                Finding(
                    "pong-unsolicited",
                    "pong",
                    "the server sent 'pong' with no ping pending",
                    "send exactly one 'pong' per 'ping'",
                    error_code=409,
                )
            )
            checked.accepted = False

    def _check_clientseq(self, checked: Checked, msg_type: str, clientseq: Any) -> None:
        if not _is_seq(clientseq):
            return
        expected: int | None = None
        hint = ""
        if msg_type == "opened" and checked.accepted and self.open_seq is not None:
            expected, hint = self.open_seq, "your server must echo the seq of the open it answers"
        elif msg_type == "pong" and checked.accepted and self.pending_ping_seq is not None:
            expected, hint = (
                self.pending_ping_seq,
                "your server must echo the seq of the ping it answers",
            )
        elif msg_type == "closed" and checked.accepted and self.close_seq is not None:
            expected, hint = self.close_seq, "your server must echo the seq of the close it answers"
        if expected is not None and clientseq != expected:
            checked.findings.append(
                Finding(
                    "clientseq",
                    f"{msg_type}.clientseq",
                    f"{msg_type}.clientseq is {clientseq}, expected {expected}",
                    hint,
                    expected=expected,
                    actual=clientseq,
                    error_code=400,
                )
            )
        elif not self.clientseq_seen <= clientseq <= self.client_seq:
            checked.findings.append(
                Finding(
                    "clientseq",
                    f"{msg_type}.clientseq",
                    f"{msg_type}.clientseq is {clientseq}, expected {self.clientseq_seen}.."
                    f"{self.client_seq}",
                    "clientseq is the seq of the last client message the server processed: "
                    "it never exceeds what the client sent and never goes back",
                    expected=[self.clientseq_seen, self.client_seq],
                    actual=clientseq,
                    error_code=400,
                )
            )
        if clientseq <= self.client_seq:  # an impossible value is not a new baseline
            self.clientseq_seen = max(self.clientseq_seen, clientseq)

    # --- parameters -------------------------------------------------------------------------

    def _param_error(
        self,
        checked: Checked,
        path: str,
        actual: Any,
        expected: str,
        hint: str,
        *,
        present: bool = True,
        code: int = 500,
        fatal: bool = True,
    ) -> None:
        what = f"is {_show(actual)}" if present else "is missing"
        checked.findings.append(
            Finding(
                "parameters",
                path,
                f"{path} {what}, expected {expected}",
                hint,
                expected=expected,
                actual=actual if present else None,
                error_code=code,
                fatal=fatal,
            )
        )
        if fatal:
            checked.accepted = False

    def _check_parameters(self, checked: Checked, msg_type: str, params: dict[str, Any]) -> None:
        if msg_type == "opened":
            self._check_opened(checked, params)
        elif msg_type == "disconnect":
            reason = params.get("reason")
            if reason not in DISCONNECT_REASONS:
                self._param_error(
                    checked,
                    "disconnect.parameters.reason",
                    reason,
                    "one of completed, unauthorized, error",
                    "disconnect needs a reason",
                    present="reason" in params,
                )
            if "info" in params and not isinstance(params["info"], str):
                self._param_error(
                    checked, "disconnect.parameters.info", params["info"], "a string", ""
                )
        elif msg_type == "reconnect":
            if "info" in params and not isinstance(params["info"], str):
                self._param_error(
                    checked, "reconnect.parameters.info", params["info"], "a string", ""
                )
        elif msg_type == "event":
            self._check_event(checked, params)

    def _check_opened(self, checked: Checked, params: dict[str, Any]) -> None:
        media = params.get("media")
        if not isinstance(media, list):
            self._param_error(
                checked,
                "opened.parameters.media",
                media,
                "an array with zero or one of the offered media",
                "opened must always carry media (use [] to receive no audio)",
                present="media" in params,
                code=400,
            )
        elif len(media) > 1:
            self._param_error(
                checked,
                "opened.parameters.media",
                media,
                "at most one entry",
                "select a single offer, or [] for no audio",
                code=400,
            )
        elif media:
            self._check_selected_media(checked, media[0])
        if "startPaused" in params and not isinstance(params["startPaused"], bool):
            self._param_error(
                checked,
                "opened.parameters.startPaused",
                params["startPaused"],
                "true or false",
                "omit it or send a boolean",
            )
        if "discardTo" in params and not _is_duration(params["discardTo"]):
            self._param_error(
                checked,
                "opened.parameters.discardTo",
                params["discardTo"],
                "a duration such as PT1.2S",
                "durations are seconds only: PT<seconds>S",
            )
        languages = params.get("supportedLanguages")
        if "supportedLanguages" in params:
            if not isinstance(languages, list) or not all(is_language(item) for item in languages):
                self._param_error(
                    checked,
                    "opened.parameters.supportedLanguages",
                    languages,
                    "an array of language codes like en-US",
                    "list language codes as <lang>-<region>",
                    fatal=False,
                    code=400,
                )
        elif self.supported_languages_requested:
            self._param_error(
                checked,
                "opened.parameters.supportedLanguages",
                None,
                "an array (empty if none)",
                "the open asked for supportedLanguages, so opened must list them",
                present=False,
                fatal=False,
                code=400,
            )

    def _check_selected_media(self, checked: Checked, entry: Any) -> None:
        path = "opened.parameters.media[0]"
        offered = [describe_media(offer) for offer in self.offers]
        if isinstance(entry, dict):
            core = {key: entry.get(key) for key in _MEDIA_KEYS}
            for offer in self.offers:
                if core == {key: offer.get(key) for key in _MEDIA_KEYS}:
                    extra = sorted(set(entry) - set(_MEDIA_KEYS))
                    if extra:
                        checked.findings.append(
                            Finding(
                                "media-extra-keys",
                                path,
                                f"{path} has keys that were not offered: {', '.join(extra)}",
                                "copy the selected offer verbatim",
                                severity="warning",
                            )
                        )
                    return
            reordered = [
                offer
                for offer in self.offers
                if isinstance(entry.get("channels"), list)
                and isinstance(offer.get("channels"), list)
                and sorted(map(str, entry["channels"])) == sorted(offer["channels"])
                and entry.get("channels") != offer.get("channels")
                and all(entry.get(key) == offer.get(key) for key in ("type", "format", "rate"))
            ]
            if reordered:
                hint = (
                    f"keep the channel order of the offer ({describe_media(reordered[0])}); "
                    "the frame layout follows it"
                )
            else:
                hint = "select one offer verbatim (type, format, channels in order, rate)"
        else:
            hint = "media entries are objects copied from the offer"
        self._param_error(
            checked,
            path,
            entry,
            "one of the offers: " + ", ".join(offered),
            hint,
            code=400,
        )

    def _check_event(self, checked: Checked, params: dict[str, Any]) -> None:
        entities = params.get("entities")
        if not isinstance(entities, list) or not entities:
            self._param_error(
                checked,
                "event.parameters.entities",
                entities,
                "a non-empty array",
                "the Genesys client reads entities[0]; never send an empty event",
                present="entities" in params,
            )
            return
        for index, entity in enumerate(entities):
            path = f"event.parameters.entities[{index}]"
            if not isinstance(entity, dict) or not isinstance(entity.get("type"), str):
                self._param_error(
                    checked, f"{path}.type", entity, "an object with a string type", ""
                )
                return
            if "data" not in entity:
                self._param_error(
                    checked, f"{path}.data", None, "any JSON value", "", present=False
                )
                return
            if entity["type"] == "transcript":
                self._check_transcript(checked, path + ".data", entity["data"])

    def _check_transcript(self, checked: Checked, path: str, data: Any) -> None:
        """The fields the Genesys conformance suite reads from a final transcript."""

        def warn(key: str, value: Any, expected: str) -> None:
            self._param_error(
                checked,
                f"{path}.{key}",
                value,
                expected,
                "see the transcript entity in the AudioHook event reference",
                present=value is not None,
                fatal=False,
            )

        if not isinstance(data, dict):
            warn("", data, "an object")
            return
        if not is_uuid(data.get("id")):
            warn("id", data.get("id"), "a UUID")
        if data.get("channelId") not in (0, 1) or isinstance(data.get("channelId"), bool):
            warn("channelId", data.get("channelId"), "0 or 1")
        if not isinstance(data.get("isFinal"), bool):
            warn("isFinal", data.get("isFinal"), "true or false")
        if data.get("isFinal") is not True:
            return  # the suite inspects final transcripts only
        for key in ("offset", "duration"):
            if key in data and not _is_duration(data[key]):
                warn(key, data[key], "a duration such as PT1.2S")
        alternatives = data.get("alternatives")
        if not isinstance(alternatives, list) or not alternatives:
            warn("alternatives", alternatives, "a non-empty array")
            return
        for index, alternative in enumerate(alternatives):
            confidence = alternative.get("confidence") if isinstance(alternative, dict) else None
            if isinstance(confidence, bool) or not (
                isinstance(confidence, int | float) and 0 <= confidence <= 1
            ):
                warn(f"alternatives[{index}].confidence", confidence, "a number from 0 to 1")

    # --- state -------------------------------------------------------------------------------

    def _advance(self, msg_type: str, params: dict[str, Any]) -> None:
        if msg_type == "opened":
            self.phase = "open"
            media = params.get("media")
            self.selected_media = media[0] if isinstance(media, list) and media else None
        elif msg_type == "closed":
            self.phase = "closed"
        elif msg_type == "pong":
            self.pending_ping_seq = None

    def finish(self) -> list[Finding]:
        """Findings that only show at the end: a ping the server never answered."""
        if self.pending_ping_seq is None:
            return []
        return [
            Finding(
                "pong-missing",
                "pong",
                f"no 'pong' for the ping with seq {self.pending_ping_seq}",
                "answer every ping with a pong right away, in every state",
                error_code=408,
            )
        ]
