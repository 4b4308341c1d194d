"""Utterances of one channel, by frame energy, on the session timeline.

Fed audio chunks with their timeline offsets (samples at 8000 Hz), it reports each utterance
with the offset of its first and the end of its last voiced frame; one shorter than 100 ms is
dropped. A gap in the offsets (discarded audio) does not end an utterance; a pause or language
update does, through `flush` (docs/protocol.md §5.5).
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass, field

FRAME_SAMPLES = 160  # 20 ms at 8 kHz


@dataclass(frozen=True, slots=True)
class VadConfig:
    threshold_rms: float = 400.0  # about -38 dBFS: speech on a call line, not its hiss
    start_frames: int = 2  # voiced frames in a row that start an utterance
    end_frames: int = 15  # unvoiced frames in a row (300 ms) that end one
    min_frames: int = 5  # 100 ms: a shorter one (a click, a word cut off by the close) is dropped
    context_frames: int = 10  # audio kept before and after it for the recogniser
    max_frames: int = 1000  # 20 s: a longer utterance is cut (a final transcript each)


@dataclass(frozen=True, slots=True)
class Utterance:
    channel: int
    start: int  # timeline offset of its first voiced sample
    end: int  # timeline offset just past its last voiced sample
    audio_start: int  # timeline offset of `audio`'s first sample (context included)
    audio: array[int] = field(repr=False)

    @property
    def duration(self) -> int:
        return self.end - self.start


class Segmenter:
    def __init__(self, channel: int, config: VadConfig | None = None) -> None:
        self.channel = channel
        self._config = config or VadConfig()
        self._carry = array("h")  # samples of an incomplete frame
        self._carry_offset = 0
        # (offset, samples) of recent frames before an utterance starts
        self._before: deque[tuple[int, array[int]]] = deque(maxlen=self._config.context_frames)
        self._frames: list[tuple[int, array[int]]] = []  # the open utterance's frames
        self._voiced_run = 0
        self._silent_run = 0
        self._start: int | None = None
        self._end = 0

    def feed(self, offset: int, samples: array[int]) -> list[Utterance]:
        if self._carry and self._carry_offset + len(self._carry) == offset:
            samples = self._carry + samples
            offset = self._carry_offset
        # else: a gap (discarded audio) left a partial frame behind; it is too short to matter
        self._carry = array("h")
        out: list[Utterance] = []
        whole = len(samples) - len(samples) % FRAME_SAMPLES
        for index in range(0, whole, FRAME_SAMPLES):
            out += self._frame(offset + index, samples[index : index + FRAME_SAMPLES])
        if whole < len(samples):
            self._carry = samples[whole:]
            self._carry_offset = offset + whole
        return out

    def flush(self) -> list[Utterance]:
        """End the open utterance now (pause, language update, close)."""
        self._carry = array("h")
        self._before.clear()
        self._voiced_run = 0
        return self._emit()

    def _frame(self, offset: int, frame: array[int]) -> list[Utterance]:
        config = self._config
        voiced = math.sqrt(sum(x * x for x in frame) / len(frame)) >= config.threshold_rms
        if self._start is None:
            self._before.append((offset, frame))
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= config.start_frames:
                self._frames = list(self._before)
                first_voiced = self._frames[-config.start_frames][0]
                self._start = first_voiced
                self._end = offset + len(frame)
                self._silent_run = 0
            return []
        self._frames.append((offset, frame))
        if voiced:
            self._silent_run = 0
            self._end = offset + len(frame)
        else:
            self._silent_run += 1
        if self._silent_run >= config.end_frames or len(self._frames) >= config.max_frames:
            return self._emit()
        return []

    def _emit(self) -> list[Utterance]:
        start = self._start
        if start is None:
            return []
        frames, self._frames = self._frames, []
        self._start = None
        self._voiced_run = 0
        self._before.clear()
        if self._end - start < self._config.min_frames * FRAME_SAMPLES:
            return []  # too short to hold a word: no transcript
        audio = array("h")
        for _offset, samples in frames:
            audio += samples
        return [Utterance(self.channel, start, self._end, frames[0][0], audio)]
