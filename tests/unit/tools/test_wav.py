"""WAV writing: 16-bit PCM by default (PCMU expanded), µ-law (format 7) on request, with
headers that standard readers accept."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from app.client.audio import ulaw_decode_byte
from app.tools.wav import WAVE_FORMAT_MULAW, WAVE_FORMAT_PCM, WavWriter, read_wav, wav_bytes


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
