"""Minimal WAV writing and reading for session recordings.

By default every recording is 16-bit PCM (format tag 1, little-endian), which every player,
browser, editor and Python's `wave` opens: PCMU audio is expanded from µ-law (G.711) on the
way. With `encoding="mulaw"` PCMU is stored as it came instead, as a µ-law WAV (format tag 7,
8 bits, with the `fact` chunk non-PCM formats carry): half the size, but many tools refuse it.
L16 is always PCM. Frames are already sample-interleaved, which is WAV's layout too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Literal

WavEncoding = Literal["pcm16", "mulaw"]
WAV_ENCODINGS: Final[tuple[WavEncoding, ...]] = ("pcm16", "mulaw")

WAVE_FORMAT_PCM: Final = 1
WAVE_FORMAT_MULAW: Final = 7

_FORMATS: Final = {"PCMU": (WAVE_FORMAT_MULAW, 8), "L16": (WAVE_FORMAT_PCM, 16)}


def _ulaw_to_linear(value: int) -> int:
    """G.711 µ-law byte -> 16-bit linear sample."""
    value = ~value & 0xFF
    magnitude = ((((value & 0x0F) << 3) + 0x84) << ((value >> 4) & 0x07)) - 0x84
    return -magnitude if value & 0x80 else magnitude


_ULAW_TO_PCM16: Final = tuple(struct.pack("<h", _ulaw_to_linear(b)) for b in range(256))


def ulaw_to_pcm16(data: bytes) -> bytes:
    """µ-law bytes -> 16-bit little-endian PCM (two bytes per sample)."""
    return b"".join(map(_ULAW_TO_PCM16.__getitem__, data))


def stored_format(audio_format: str, encoding: WavEncoding) -> str:
    """The format the WAV file holds: PCMU stays µ-law only when asked for."""
    if audio_format not in _FORMATS:
        raise ValueError(f"unsupported audio format {audio_format!r}")
    if encoding not in WAV_ENCODINGS:
        raise ValueError(f"unsupported WAV encoding {encoding!r}")
    return "PCMU" if audio_format == "PCMU" and encoding == "mulaw" else "L16"


def _header(audio_format: str, channels: int, rate: int, data_bytes: int) -> bytes:
    tag, bits = _FORMATS[audio_format]
    block_align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block_align, block_align, bits)
    chunks = b""
    if tag == WAVE_FORMAT_PCM:
        chunks += b"fmt " + struct.pack("<I", len(fmt)) + fmt
    else:
        fmt += struct.pack("<H", 0)  # cbSize: no extension
        chunks += b"fmt " + struct.pack("<I", len(fmt)) + fmt
        chunks += b"fact" + struct.pack("<II", 4, data_bytes // block_align)
    chunks += b"data" + struct.pack("<I", data_bytes)
    riff_size = 4 + len(chunks) + data_bytes + (data_bytes & 1)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + chunks


def wav_bytes(audio_format: Literal["PCMU", "L16"], channels: int, rate: int, data: bytes) -> bytes:
    """A complete WAV file holding `data` (interleaved samples)."""
    pad = b"\0" if len(data) & 1 else b""
    return _header(audio_format, channels, rate, len(data)) + data + pad


class WavWriter:
    """Streams samples of `audio_format` into a WAV file of `encoding` (16-bit PCM unless
    "mulaw" keeps PCMU as it came); the header sizes are fixed up by close()."""

    def __init__(
        self,
        path: Path,
        audio_format: str,
        channels: int,
        rate: int = 8000,
        *,
        encoding: WavEncoding = "pcm16",
    ) -> None:
        stored = stored_format(audio_format, encoding)
        self._expand = audio_format == "PCMU" and stored == "L16"
        self.encoding: WavEncoding = "mulaw" if stored == "PCMU" else "pcm16"
        audio_format = stored
        self.path = path
        self._format = audio_format
        self._channels = channels
        self._rate = rate
        self._file: BinaryIO = path.open("wb")
        self._header_len = len(_header(audio_format, channels, rate, 0))
        self._file.write(b"\0" * self._header_len)
        self.data_bytes = 0

    def write(self, data: bytes) -> None:
        if self._expand:
            data = ulaw_to_pcm16(data)
        self._file.write(data)
        self.data_bytes += len(data)

    def close(self) -> None:
        if self._file.closed:
            return
        if self.data_bytes & 1:
            self._file.write(b"\0")
        self._file.seek(0)
        self._file.write(_header(self._format, self._channels, self._rate, self.data_bytes))
        self._file.close()


@dataclass(frozen=True, slots=True)
class WavContent:
    format_tag: int
    channels: int
    rate: int
    bits_per_sample: int
    data: bytes


def read_wav(source: Path | bytes) -> WavContent:
    """Parse a WAV file: format fields and the data chunk (ValueError when malformed)."""
    raw = source.read_bytes() if isinstance(source, Path) else source
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    while pos + 8 <= len(raw):
        chunk_id = raw[pos : pos + 4]
        (size,) = struct.unpack_from("<I", raw, pos + 4)
        body = raw[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", body)
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("data chunk before fmt chunk")
            return WavContent(fmt[0], fmt[1], fmt[2], fmt[3], bytes(body))
        pos += 8 + size + (size & 1)
    raise ValueError("no data chunk")
