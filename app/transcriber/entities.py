"""Transcript entities as the client expects them (docs/protocol.md §3.4): one per `event`."""

from __future__ import annotations

import uuid
from typing import Any

from app.protocol.media import SAMPLE_RATE
from app.protocol.messages import format_duration
from app.transcriber.recognizer import Recognition
from app.transcriber.vad import Utterance

# Utterance ids derive from session, channel and start: a retried send repeats the same id.
_NAMESPACE = uuid.UUID("5f0c1f0e-9a43-4e4c-8d1e-4a7b2f6c3d21")


def utterance_id(session_id: str, utterance: Utterance) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{session_id}/{utterance.channel}/{utterance.start}"))


def transcript_entity(
    session_id: str, utterance: Utterance, recognition: Recognition, language: str
) -> dict[str, Any]:
    """A final transcript: offset and duration on the session timeline, tokens too."""
    tokens: list[dict[str, Any]] = []
    last_offset = -1
    for word in recognition.words:
        # Word times are from the start of the audio given to the recogniser (its context
        # included); kept inside the utterance, and unique, as the client checks.
        start = utterance.audio_start + round(word.start * SAMPLE_RATE)
        start = min(max(start, utterance.start, last_offset + 1), utterance.end - 1)
        end = min(start + max(1, round(word.duration * SAMPLE_RATE)), utterance.end)
        if start <= last_offset or end <= start:
            continue
        last_offset = start
        tokens.append(
            {
                "type": "word",
                "value": word.text,
                "confidence": round(word.confidence, 3),
                "offset": format_duration(start),
                "duration": format_duration(end - start),
                "language": language,
            }
        )
    return {
        "type": "transcript",
        "data": {
            "id": utterance_id(session_id, utterance),
            "channelId": utterance.channel,
            "isFinal": True,
            "offset": format_duration(utterance.start),
            "duration": format_duration(utterance.duration),
            "alternatives": [
                {
                    "confidence": round(recognition.confidence, 3),
                    "languages": [language],
                    "interpretations": [
                        {"type": "display", "transcript": recognition.text, "tokens": tokens}
                    ],
                }
            ],
        },
    }
