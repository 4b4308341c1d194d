"""Minimal WAV writing and reading for session recordings.

PCMU is stored as it came, as a µ-law WAV (format tag 7, 8 bits, with the `fact` chunk
non-PCM formats carry); L16 as PCM (format tag 1, 16-bit little-endian). Frames are already
sample-interleaved, which is WAV's layout too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Literal

WAVE_FORMAT_PCM: Final = 1
WAVE_FORMAT_MULAW: Final = 7

_FORMATS: Final = {"PCMU": (WAVE_FORMAT_MULAW, 8), "L16": (WAVE_FORMAT_PCM, 16)}


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
    """Streams samples into a WAV file; the header sizes are fixed up by close()."""

    def __init__(self, path: Path, audio_format: str, channels: int, rate: int = 8000) -> None:
        if audio_format not in _FORMATS:
            raise ValueError(f"unsupported audio format {audio_format!r}")
        self.path = path
        self._format = audio_format
        self._channels = channels
        self._rate = rate
        self._file: BinaryIO = path.open("wb")
        self._header_len = len(_header(audio_format, channels, rate, 0))
        self._file.write(b"\0" * self._header_len)
        self.data_bytes = 0

    def write(self, data: bytes) -> None:
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
