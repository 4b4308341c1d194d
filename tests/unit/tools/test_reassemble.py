"""Reassembling a session's audio from stream entries (pure)."""

from __future__ import annotations

from collections.abc import Mapping

from app.protocol.media import MediaFormat
from app.publisher.payload_crypto import PayloadCipher
from app.tools.consume import AudioAssembler, reassemble

MEDIA = MediaFormat("PCMU", ("external", "internal"))
EVENT = {b"type": b"paused", b"data": b"{}"}


def audio_entry(offset: int, samples: int, audio: bytes) -> Mapping[bytes, bytes]:
    return {b"offset": b"%d" % offset, b"samples": b"%d" % samples, b"audio": audio}


def test_events_skipped_and_frames_concatenated() -> None:
    entries = [
        (b"1-0", audio_entry(0, 2, b"abcd")),
        (b"2-0", EVENT),
        (b"3-0", audio_entry(2, 1, b"ef")),
    ]
    assert reassemble(entries, MEDIA, session_id="s") == b"abcdef"


def test_gaps_filled_with_silence_when_asked() -> None:
    entries = [(b"1-0", audio_entry(0, 1, b"ab")), (b"2-0", audio_entry(3, 1, b"cd"))]
    assert reassemble(entries, MEDIA, session_id="s") == b"abcd"
    assert reassemble(entries, MEDIA, session_id="s", fill_gaps=True) == b"ab" + b"\xff" * 4 + b"cd"
    l16 = MediaFormat("L16", ("external",))
    assert reassemble(entries, l16, session_id="s", fill_gaps=True) == b"ab" + b"\0" * 4 + b"cd"


def test_statistics_count_missing_entries_gaps_and_undecryptable() -> None:
    cipher = PayloadCipher("k1", bytes(32), "s")
    nonce, sealed = cipher.encrypt(1, b"xy")
    encrypted = {**audio_entry(1, 1, sealed), b"kid": b"k1", b"nonce": nonce}
    assembler = AudioAssembler(MEDIA, "s", {"k1": bytes(32)})
    out = [
        assembler.add(b"1-0", audio_entry(0, 1, b"ab")),
        assembler.add(b"4-0", encrypted),  # 2-0 and 3-0 were trimmed away
        assembler.add(b"5-0", {**encrypted, b"kid": b"other"}),
        assembler.add(b"6-0", audio_entry(5, 1, b"gh")),
    ]
    assert out == [b"ab", b"xy", b"", b"gh"]
    stats = assembler.stats.as_dict()
    assert stats == {"entries": 3, "samples": 3, "bytes": 6, "missing_entries": 2,
                     "undecryptable": 1, "gaps": [[2, 5]]}  # fmt: skip
