"""One session's stream, entry by entry, to the utterances to transcribe (no I/O).

The session stream holds the audio and, inline and in order, the lifecycle events
(app/publisher/schema.py). What they mean for transcripts (docs/protocol.md §5.5):
`paused` ends the open utterances (the audio stops; after `resumed` the offsets jump by what
it reports discarded); `language_updated` ends them and switches language; `discarded` does not (the
gap is on the timeline); `closing` ends them and asks for `finish`; `closed` ends the session.

Offsets are on the stream timeline the entries carry (the audio received plus what the client
reported discarded, in `discarded` and in `resumed`), or with `offsets="received"` on the audio
received alone, counted here: reported gaps then take no time (docs/protocol.md §5.5).
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from app.protocol.media import MediaFormat
from app.transcriber.audio import channels
from app.transcriber.vad import Segmenter, Utterance, VadConfig

# An utterance and the language it was spoken in (the session's when it ended).
Work: TypeAlias = tuple[Utterance, str | None]
Offsets: TypeAlias = Literal["stream", "received"]
OFFSETS: tuple[Offsets, ...] = ("stream", "received")

_FLUSHING_EVENTS = frozenset({"paused", "language_updated", "closing", "closed"})


class SessionTranscript:
    def __init__(
        self,
        media: MediaFormat,
        language: str | None,
        vad: VadConfig | None = None,
        offsets: Offsets = "stream",
    ) -> None:
        self.media = media
        self.language = language
        self.offsets = offsets
        self._received = 0  # samples per channel received so far
        self._segmenters = [Segmenter(index, vad) for index in range(media.channel_count)]
        self.finish_requested = False  # `closing` seen: send `finish` after the transcripts
        self.ended = False  # `closing` or `closed` seen: nothing more comes

    def audio(self, offset: int, data: bytes) -> list[Work]:
        per_channel = channels(data, self.media)
        if self.offsets == "received":
            offset = self._received
        self._received += len(per_channel[0])
        out: list[Utterance] = []
        for segmenter, samples in zip(self._segmenters, per_channel, strict=True):
            out += segmenter.feed(offset, samples)
        return self._work(out)

    def event(self, event_type: str, data: dict[str, Any]) -> list[Work]:
        if event_type not in _FLUSHING_EVENTS:
            return []
        out: list[Utterance] = []
        for segmenter in self._segmenters:
            out += segmenter.flush()
        work = self._work(out)  # in the language they were spoken in
        if event_type == "language_updated":
            self.language = data.get("language") or self.language
        elif event_type in ("closing", "closed"):
            self.ended = True
            self.finish_requested = event_type == "closing"
        return work

    def _work(self, utterances: list[Utterance]) -> list[Work]:
        ordered = sorted(utterances, key=lambda u: (u.end, u.channel))  # in time order
        return [(utterance, self.language) for utterance in ordered]
