from __future__ import annotations

import io
import struct
import wave
from array import array
from pathlib import Path

import pytest

from app.client.audio import (
    FRAME_SAMPLES,
    PcmAudio,
    PcmSource,
    WavError,
    encode,
    encode_frames,
    parse_wav,
    pcm_wav_bytes,
    read_wav,
    tone,
    wav_bytes,
    wav_source,
    write_wav,
)
from app.protocol.media import MediaFormat
from app.tools.wav import ulaw_decode_byte, ulaw_encode_sample


def test_tone_is_a_1khz_sine_on_both_channels() -> None:
    audio = tone(0.5)
    assert audio.samples == 4000
    assert audio.external == audio.internal
    period = list(audio.external[:8])
    assert list(audio.external[8:16]) == period  # 8000 / 1000 = 8 samples per period
    assert period[0] == 0
    assert max(period) == round(0.5 * 32767)


def _two_level_audio(samples: int) -> PcmAudio:
    return PcmAudio(array("h", [1000] * samples), array("h", [-1000] * samples))


@pytest.mark.parametrize(
    ("fmt", "channels", "frame_size"),
    [
        ("PCMU", ("external", "internal"), 3200),
        ("PCMU", ("internal", "external"), 3200),
        ("PCMU", ("external",), 1600),
        ("PCMU", ("internal",), 1600),
        ("L16", ("external", "internal"), 6400),
        ("L16", ("internal", "external"), 6400),
        ("L16", ("external",), 3200),
        ("L16", ("internal",), 3200),
    ],
)
def test_frames_have_200ms_sizes_and_layout_order(
    fmt: str, channels: tuple[str, ...], frame_size: int
) -> None:
    media = MediaFormat(fmt, channels)  # type: ignore[arg-type]
    frames = encode_frames(_two_level_audio(FRAME_SAMPLES * 2 + 100), media)
    assert [len(f) for f in frames] == [frame_size, frame_size, frame_size * 100 // FRAME_SAMPLES]
    width = 1 if fmt == "PCMU" else 2
    first = frames[0][: width * len(channels)]
    expected = {
        ("PCMU", "external"): bytes([ulaw_encode_sample(1000)]),
        ("PCMU", "internal"): bytes([ulaw_encode_sample(-1000)]),
        ("L16", "external"): struct.pack("<h", 1000),
        ("L16", "internal"): struct.pack("<h", -1000),
    }
    assert first == b"".join(expected[(fmt, name)] for name in channels)


def test_l16_is_little_endian() -> None:
    assert encode(array("h", [0x0102, -2]), "L16") == b"\x02\x01\xfe\xff"


def test_pcm_source_encodes_once_per_layout() -> None:
    source = PcmSource(tone(1.0))
    stereo = MediaFormat("PCMU", ("external", "internal"))
    assert source.frames(stereo) is source.frames(stereo)
    assert len(source.frames(stereo)) == 5
    assert source.frames(MediaFormat("PCMU", ("external",))) is not source.frames(stereo)


def test_fitted_cuts_and_loops() -> None:
    audio = PcmAudio.mono(array("h", [1, 2, 3]))
    assert list(audio.fitted(2).external) == [1, 2]
    assert list(audio.fitted(7).internal) == [1, 2, 3, 1, 2, 3, 1]


def test_pcm16_wav_round_trip_and_stdlib_reads_it(tmp_path: Path) -> None:
    audio = PcmAudio(array("h", [1, -2, 300, -32768]), array("h", [5, 6, 7, 32767]))
    path = tmp_path / "stereo.wav"
    path.write_bytes(pcm_wav_bytes(audio))
    back = read_wav(path)
    assert (back.encoding, back.channels, back.rate) == ("L16", 2, 8000)
    pcm = back.to_pcm()
    assert pcm.external == audio.external
    assert pcm.internal == audio.internal
    with wave.open(str(path)) as reader:  # an independent reader agrees
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (2, 2, 8000)
        assert reader.readframes(4) == back.data


def test_mono_pcm_wav_is_heard_on_both_channels() -> None:
    audio = PcmAudio.mono(array("h", [10, 20, 30]))
    pcm = parse_wav(pcm_wav_bytes(audio, layout="mono")).to_pcm()
    assert list(pcm.external) == list(pcm.internal) == [10, 20, 30]


def test_ulaw_wav_round_trip(tmp_path: Path) -> None:
    data = bytes([0x00, 0x80, 0x10, 0x90, 0xFF, 0x7E])
    path = tmp_path / "ulaw.wav"
    write_wav(path, data, encoding="PCMU", channels=2)
    back = read_wav(path)
    assert (back.encoding, back.channels, back.data) == ("PCMU", 2, data)
    pcm = back.to_pcm()
    assert list(pcm.external) == [ulaw_decode_byte(b) for b in data[0::2]]
    assert list(pcm.internal) == [ulaw_decode_byte(b) for b in data[1::2]]
    # Re-encoding a µ-law file as PCMU frames gives back the same bytes.
    frames = encode_frames(pcm, MediaFormat("PCMU", ("external", "internal")))
    assert b"".join(frames) == data


def test_ulaw_wav_bytes_are_streamed_unchanged_even_negative_zero(tmp_path: Path) -> None:
    # 0x7F decodes to 0 like 0xFF; a decode/encode round trip would turn it into 0xFF.
    data = bytes([0x7F, 0x00, 0x80, 0xFF, 0x7E, 0x01]) * 400
    stereo, mono = tmp_path / "stereo.wav", tmp_path / "mono.wav"
    write_wav(stereo, data, encoding="PCMU", channels=2)
    write_wav(mono, data, encoding="PCMU", channels=1)
    stereo_frames = wav_source(stereo).frames(MediaFormat("PCMU", ("external", "internal")))
    assert b"".join(stereo_frames) == data
    mono_frames = wav_source(mono).frames(MediaFormat("PCMU", ("internal",)))
    assert b"".join(mono_frames) == data
    looped = wav_source(stereo, seconds=0.5).frames(MediaFormat("PCMU", ("external", "internal")))
    assert b"".join(looped) == (data * 4)[:8000]  # 4000 stereo samples, looped
    # Another layout still goes through the samples.
    inverted = wav_source(stereo).frames(MediaFormat("PCMU", ("internal", "external")))
    assert b"".join(inverted)[:2] == bytes([0x00, 0xFF])  # (internal, external), 0x7F re-encoded


def test_wav_reader_skips_unknown_chunks_with_padding() -> None:
    blob = bytearray(wav_bytes(b"\x01\x00\x02\x00", encoding="L16", channels=1))
    fmt_end = 12 + 8 + 16
    blob[fmt_end:fmt_end] = b"LIST" + struct.pack("<I", 3) + b"abc\0"  # odd size, padded
    blob[4:8] = struct.pack("<I", len(blob) - 8)
    assert list(parse_wav(bytes(blob)).to_pcm().external) == [1, 2]


def test_wav_reader_accepts_extensible_pcm() -> None:
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, 8000, 16000, 2, 16)
    fmt += struct.pack("<HHI", 22, 16, 4) + struct.pack("<H", 1) + bytes(14)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", 2) + b"\x05\x00"
    blob = b"RIFF" + struct.pack("<I", len(body)) + body
    assert list(parse_wav(blob).to_pcm().external) == [5]


def _stdlib_wav(rate: int, channels: int, width: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(bytes(width * channels * 4))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (_stdlib_wav(16000, 1, 2), "16000 Hz"),
        (_stdlib_wav(8000, 3, 2), "3 channels"),
        (_stdlib_wav(8000, 1, 1), "unsupported WAV encoding"),
        (b"RIFF\x04\x00\x00\x00WAVX", "not a RIFF/WAVE"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no data chunk"),
    ],
)
def test_wav_reader_rejects_what_cannot_be_streamed(blob: bytes, message: str) -> None:
    with pytest.raises(WavError, match=message):
        parse_wav(blob)


def test_wav_source_cuts_or_loops_to_seconds(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(pcm_wav_bytes(tone(0.3)))
    assert wav_source(path).seconds == pytest.approx(0.3)
    assert wav_source(path, seconds=1.0).seconds == pytest.approx(1.0)
    looped = wav_source(path, seconds=1.0).frames(MediaFormat("L16", ("external",)))
    assert sum(len(f) for f in looped) == 8000 * 2
