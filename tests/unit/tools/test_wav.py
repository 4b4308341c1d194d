"""G.711 µ-law against the standard, and WAV writing: 16-bit PCM by default (PCMU expanded),
µ-law (format 7) on request, with headers that standard readers accept."""

from __future__ import annotations

import wave
from array import array
from pathlib import Path

import pytest

from app.tools.wav import (
    WAVE_FORMAT_MULAW,
    WAVE_FORMAT_PCM,
    WavWriter,
    read_wav,
    ulaw_decode,
    ulaw_decode_byte,
    ulaw_encode,
    ulaw_encode_sample,
    ulaw_to_pcm16,
    wav_bytes,
)


def _g191_compress(x: int) -> int:
    """ITU-T G.191 µ-law compression, written out from the standard's algorithm."""
    absno = ((~x) >> 2) + 33 if x < 0 else (x >> 2) + 33
    absno = min(absno, 0x1FFF)
    i, segment = absno >> 6, 1
    while i:
        segment += 1
        i >>= 1
    out = ((8 - segment) << 4) | (0xF - ((absno >> segment) & 0xF))
    return out | 0x80 if x >= 0 else out


def _protocol_decode(byte: int) -> int:
    """G.711 µ-law (docs/protocol.md §5.1): invert; exponent bits 4-6, mantissa 0-3; sign bit 7."""
    inverted = ~byte & 0xFF
    exponent, mantissa = (inverted >> 4) & 0x7, inverted & 0xF
    magnitude = ((mantissa * 8 + 132) << exponent) - 132
    return -magnitude if inverted & 0x80 else magnitude


@pytest.mark.parametrize(
    ("byte", "sample"),
    [(0x00, -32124), (0x80, 32124), (0xFF, 0), (0x7F, 0), (0xF0, 120), (0x70, -120), (0xEF, 132)],
)
def test_ulaw_decode_known_values(byte: int, sample: int) -> None:
    assert ulaw_decode_byte(byte) == sample


@pytest.mark.parametrize(
    ("sample", "byte"),
    [(0, 0xFF), (-1, 0x7F), (1, 0xFF), (32767, 0x80), (-32768, 0x00), (1000, 0xCE), (-1000, 0x4E)],
)
def test_ulaw_encode_known_values(sample: int, byte: int) -> None:
    assert ulaw_encode_sample(sample) == byte


def test_ulaw_decode_matches_the_protocol_formula_for_every_byte() -> None:
    assert [ulaw_decode_byte(b) for b in range(256)] == [_protocol_decode(b) for b in range(256)]


def test_ulaw_encode_matches_g191_for_every_16_bit_sample() -> None:
    samples = array("h", range(-32768, 32768))
    assert ulaw_encode(samples) == bytes(_g191_compress(x) for x in samples)


def test_ulaw_round_trip_is_exact_for_every_code() -> None:
    codes = bytes(range(256))
    again = ulaw_encode(ulaw_decode(codes))
    # 0x7F is the "negative zero" code; it decodes to 0, which encodes as 0xFF.
    assert again == bytes(0xFF if b == 0x7F else b for b in range(256))


def test_ulaw_quantisation_error_is_bounded() -> None:
    samples = array("h", range(-32000, 32000, 7))
    decoded = ulaw_decode(ulaw_encode(samples))
    for original, value in zip(samples, decoded, strict=True):
        # Step size of the top segment is 1024; the error is at most half a step plus bias rounding.
        assert abs(original - value) <= max(16, abs(original) // 16)


def test_ulaw_to_pcm16_is_the_decoder_little_endian() -> None:
    codes = bytes(range(256))
    assert ulaw_to_pcm16(codes) == b"".join(
        ulaw_decode_byte(b).to_bytes(2, "little", signed=True) for b in codes
    )


def test_l16_stereo_is_standard_pcm(tmp_path: Path) -> None:
    data = bytes(range(256)) * 8
    writer = WavWriter(tmp_path / "a.wav", "L16", channels=2)
    writer.write(data[:1000])
    writer.write(data[1000:])
    writer.close()
    with wave.open(str(tmp_path / "a.wav")) as reader:  # the stdlib reads PCM only
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (2, 2, 8000)
        assert reader.getnframes() == len(data) // 4
        assert reader.readframes(reader.getnframes()) == data
    content = read_wav(tmp_path / "a.wav")
    assert (content.format_tag, content.bits_per_sample, content.data) == (
        WAVE_FORMAT_PCM,
        16,
        data,
    )


def test_pcmu_mono_has_format_7_and_fact_chunk(tmp_path: Path) -> None:
    data = bytes(range(255))  # odd length: the data chunk gets a pad byte
    writer = WavWriter(tmp_path / "u.wav", "PCMU", channels=1, encoding="mulaw")
    writer.write(data)
    writer.close()
    raw = (tmp_path / "u.wav").read_bytes()
    assert raw == wav_bytes("PCMU", 1, 8000, data)
    assert b"fact" in raw[:64]
    assert len(raw) % 2 == 0
    assert int.from_bytes(raw[4:8], "little") == len(raw) - 8
    content = read_wav(raw)
    assert (content.format_tag, content.channels, content.rate, content.bits_per_sample) == (
        WAVE_FORMAT_MULAW, 1, 8000, 8,
    )  # fmt: skip
    assert content.data == data


def test_pcmu_is_expanded_to_16_bit_pcm_by_default(tmp_path: Path) -> None:
    data = bytes(range(256)) * 2  # every µ-law value, stereo
    writer = WavWriter(tmp_path / "p.wav", "PCMU", channels=2)
    writer.write(data[:101])  # frames need not end on a sample pair
    writer.write(data[101:])
    writer.close()
    with wave.open(str(tmp_path / "p.wav")) as reader:  # the stdlib reads PCM only
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (2, 2, 8000)
        assert reader.getnframes() == len(data) // 2
        pcm = reader.readframes(reader.getnframes())
    samples = [int.from_bytes(pcm[i : i + 2], "little", signed=True) for i in range(0, len(pcm), 2)]
    assert samples == [ulaw_decode_byte(b) for b in data]
    assert writer.encoding == "pcm16"


def test_an_unknown_encoding_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported WAV encoding"):
        WavWriter(tmp_path / "x.wav", "PCMU", channels=1, encoding="alaw")  # type: ignore[arg-type]
