"""What the transcriber needs from a speech recogniser, and the offline default.

To use a real speech service instead of PocketSphinx, implement `Recognizer`'s three calls:

- `supports(language)`: whether to transcribe a session in this language (`en-US` form);
- `recognize(samples, language)`: one utterance, mono signed 16-bit samples at the
  recogniser's `sample_rate` (8000 or 16000; call audio is 8000 and is upsampled for 16000),
  to its text, confidence and words with their times from the start of `samples`;
- `close()`: release what it holds.

`recognize` runs in one worker thread per process (so it may block, and need not be
thread-safe); start the transcriber with your class (`python -m app.transcriber.cli
--recognizer mypackage.module:MyRecognizer`).
"""

from __future__ import annotations

import importlib
from array import array
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start: float  # seconds from the start of the samples given
    duration: float
    confidence: float  # 0..1


@dataclass(frozen=True, slots=True)
class Recognition:
    text: str
    confidence: float  # 0..1
    words: tuple[Word, ...]


class Recognizer(Protocol):
    sample_rate: int

    def supports(self, language: str) -> bool: ...

    def recognize(self, samples: array[int], language: str) -> Recognition: ...

    def close(self) -> None: ...


class PocketSphinxRecognizer:
    """CMU PocketSphinx with the US English model its wheel ships: nothing is downloaded."""

    sample_rate = 16000
    languages = frozenset({"en-US"})
    frames_per_second = 100  # PocketSphinx's default frame rate

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:  # the optional extra is not installed
            raise RuntimeError(
                "the transcriber needs PocketSphinx: pip install 'audiohook-gateway[transcribe]'"
            ) from exc
        self._decoder: Any = Decoder(loglevel="FATAL")

    def supports(self, language: str) -> bool:
        return language in self.languages

    def recognize(self, samples: array[int], language: str) -> Recognition:
        decoder = self._decoder
        decoder.start_utt()
        decoder.process_raw(samples.tobytes(), full_utt=True)
        decoder.end_utt()
        words = []
        for segment in decoder.seg():
            text = segment.word
            if text.startswith(("<", "[")):  # <s>, </s>, <sil>, [NOISE]: not words
                continue
            text = text.split("(", 1)[0]  # "where(2)": a pronunciation variant
            start = segment.start_frame / self.frames_per_second
            end = (segment.end_frame + 1) / self.frames_per_second
            words.append(Word(text, start, end - start, min(1.0, max(0.0, segment.prob))))
        confidence = sum(w.confidence for w in words) / len(words) if words else 0.0
        return Recognition(" ".join(w.text for w in words), confidence, tuple(words))

    def close(self) -> None:
        self._decoder = None


def load_recognizer(spec: str | None) -> Recognizer:
    """`module:Class` (constructed without arguments), or PocketSphinx when None."""
    if spec is None:
        return PocketSphinxRecognizer()
    module_name, _, class_name = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), class_name)
    recognizer: Recognizer = factory()
    return recognizer
