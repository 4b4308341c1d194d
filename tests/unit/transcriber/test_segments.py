"""The transcriber's pure parts: utterances on the session timeline, what pause, discard,
language update and close do to them (docs/protocol.md §5.5), and the entities it sends."""

from __future__ import annotations

import math
from array import array

from app.protocol.media import MediaFormat
from app.transcriber.audio import channels, upsample
from app.transcriber.entities import transcript_entity
from app.transcriber.recognizer import Recognition, Word
from app.transcriber.session import SessionTranscript
from app.transcriber.vad import Segmenter, Utterance

RATE = 8000
SESSION_ID = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
STEREO_L16 = MediaFormat(format="L16", channels=("external", "internal"), rate=RATE)


def tone(seconds: float, amplitude: int = 8000) -> array[int]:
    count = round(seconds * RATE)
    step = 2 * math.pi * 440 / RATE
    return array("h", (int(amplitude * math.sin(step * i)) for i in range(count)))


def quiet(seconds: float) -> array[int]:
    return array("h", bytes(2 * round(seconds * RATE)))


def feed(segmenter: Segmenter, offset: int, samples: array[int]) -> list[Utterance]:
    """In 200 ms chunks, as the client sends them."""
    out = []
    for start in range(0, len(samples), 1600):
        out += segmenter.feed(offset + start, samples[start : start + 1600])
    return out


def test_an_utterance_is_placed_on_the_timeline() -> None:
    audio = quiet(0.5) + tone(1.0) + quiet(0.6)
    [utterance] = feed(Segmenter(0), 0, audio)
    assert utterance.start == round(0.5 * RATE)
    assert utterance.end == round(1.5 * RATE)
    assert utterance.audio_start <= utterance.start  # context for the recogniser
    assert len(utterance.audio) >= utterance.duration


def test_short_gaps_do_not_split_an_utterance_and_long_ones_do() -> None:
    audio = tone(0.5) + quiet(0.1) + tone(0.5) + quiet(0.6) + tone(0.3) + quiet(0.6)
    first, second = feed(Segmenter(1), 8000, audio)
    assert (first.start, first.end) == (8000, 8000 + round(1.1 * RATE))
    assert second.start == 8000 + round(1.7 * RATE)
    assert first.channel == second.channel == 1


def test_flush_ends_the_open_utterance() -> None:
    segmenter = Segmenter(0)
    assert feed(segmenter, 0, tone(0.6)) == []
    [utterance] = segmenter.flush()
    assert (utterance.start, utterance.end) == (0, round(0.6 * RATE))
    assert segmenter.flush() == []


def test_a_fragment_shorter_than_100_ms_is_dropped() -> None:
    segmenter = Segmenter(0)
    # speech starting 60 ms before the close: too short to hold a word, no transcript
    assert feed(segmenter, 0, quiet(0.94) + tone(0.06)) == []
    assert segmenter.flush() == []
    # a click in the middle of a call is dropped the same way; 100 ms is kept
    assert feed(segmenter, RATE, tone(0.06) + quiet(0.6)) == []
    [kept] = feed(segmenter, 2 * RATE, tone(0.1) + quiet(0.6))
    assert (kept.start, kept.end) == (2 * RATE, 2 * RATE + round(0.1 * RATE))


def test_a_discarded_gap_keeps_the_utterance_on_the_timeline() -> None:
    segmenter = Segmenter(0)
    feed(segmenter, 0, tone(0.4))
    # 0.5 s discarded: the next audio's offsets jump; the utterance goes on
    [utterance] = feed(segmenter, round(0.9 * RATE), tone(0.4) + quiet(0.6))
    assert (utterance.start, utterance.end) == (0, round(1.3 * RATE))


def interleave(external: array[int], internal: array[int]) -> bytes:
    out = array("h", bytes(4 * len(external)))
    out[0::2], out[1::2] = external, internal
    return out.tobytes()


def test_session_events_flush_and_switch_language() -> None:
    transcript = SessionTranscript(STEREO_L16, "en-US")
    both = interleave(tone(0.6), quiet(0.6))
    assert transcript.audio(0, both) == []
    [(paused_utterance, language)] = transcript.event("paused", {"position": "PT0.6S"})
    assert (paused_utterance.channel, language) == (0, "en-US")
    # resumed after 10 s: offsets jump; detection starts afresh
    assert transcript.event("resumed", {}) == []
    transcript.audio(round(10.6 * RATE), interleave(quiet(0.6), tone(0.6)))
    [(updated, language)] = transcript.event("language_updated", {"language": "de-DE"})
    assert (updated.channel, updated.start, language) == (1, round(10.6 * RATE), "en-US")
    assert transcript.language == "de-DE"
    assert not transcript.ended
    transcript.audio(round(11.8 * RATE), interleave(tone(0.4), quiet(0.4)))
    [(last, language)] = transcript.event("closing", {"reason": "end"})
    assert language == "de-DE"
    assert last.start == round(11.8 * RATE)
    assert transcript.ended
    assert transcript.finish_requested


def test_offsets_on_the_stream_or_on_the_received_audio() -> None:
    """The conformance suite's discard case: `discarded` {8.0 s, 0.5 s} in an utterance,
    then a pause whose `resumed` reports 10 s discarded."""
    by_mode = {}
    for mode in ("stream", "received"):
        transcript = SessionTranscript(STEREO_L16, "en-US", offsets=mode)
        transcript.audio(0, interleave(quiet(7.0), tone(7.0)))
        assert transcript.event("discarded", {"start": "PT7S", "discarded": "PT0.5S"}) == []
        transcript.audio(round(7.5 * RATE), interleave(quiet(1.0), tone(1.0)))
        [(first, _)] = transcript.event("paused", {})
        assert transcript.event("resumed", {"start": "PT8.5S", "discarded": "PT10S"}) == []
        transcript.audio(round(18.5 * RATE), interleave(quiet(1.0), tone(1.0)))
        [(second, _)] = transcript.event("closing", {"reason": "end"})
        by_mode[mode] = [(u.channel, u.start / RATE, u.end / RATE) for u in (first, second)]
    # the stream timeline: the discarded 0.5 s and the paused 10 s take their time
    assert by_mode["stream"] == [(1, 0.0, 8.5), (1, 18.5, 19.5)]
    # the received audio: 9 s of it, with no gaps
    assert by_mode["received"] == [(1, 0.0, 8.0), (1, 8.0, 9.0)]


def test_closed_without_closing_asks_no_finish() -> None:
    transcript = SessionTranscript(STEREO_L16, "en-US")
    assert transcript.event("closed", {}) == []
    assert transcript.ended
    assert not transcript.finish_requested


def test_pcmu_channels_and_upsampling() -> None:
    media = MediaFormat(format="PCMU", channels=("external", "internal"), rate=RATE)
    external, internal = channels(bytes([0xFF, 0x00] * 4), media)
    assert list(external) == [0] * 4
    assert all(sample < -30000 for sample in internal)  # 0x00 is the most negative µ-law
    assert list(upsample(array("h", [0, 100, 200]), 2)) == [0, 50, 100, 150, 200, 200]


def test_transcript_entity() -> None:
    utterance = Utterance(1, start=8000, end=16000, audio_start=6400, audio=array("h"))
    recognition = Recognition(
        "good morning",
        0.8,
        (Word("good", 0.2, 0.3, 0.7), Word("morning", 0.5, 0.9, 0.9)),
    )
    entity = transcript_entity(SESSION_ID, utterance, recognition, "en-US")
    data = entity["data"]
    assert entity["type"] == "transcript"
    assert (data["channelId"], data["offset"], data["duration"], data["isFinal"]) == (
        1, "PT1S", "PT1S", True,
    )  # fmt: skip
    [alternative] = data["alternatives"]
    tokens = alternative["interpretations"][0]["tokens"]
    # word times count from the audio given (0.2 s of context before the utterance)
    assert [(t["value"], t["offset"], t["duration"]) for t in tokens] == [
        ("good", "PT1S", "PT0.3S"),
        ("morning", "PT1.3S", "PT0.7S"),  # cut at the utterance's end
    ]
    again = transcript_entity(SESSION_ID, utterance, recognition, "en-US")
    assert again["data"]["id"] == data["id"]  # a resent transcript keeps its id
