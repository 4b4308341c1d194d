"""WAV reading and writing, G.711 µ-law and 16-bit PCM conversion, for session recordings
and the client.

By default every recording is 16-bit PCM (format tag 1, little-endian), which every player,
browser, editor and Python's `wave` opens: PCMU audio is expanded from µ-law (G.711) on the
way. With `encoding="mulaw"` PCMU is stored as it came instead, as a µ-law WAV (format tag 7,
8 bits, with the `fact` chunk non-PCM formats carry): half the size, but many tools refuse it.
L16 is always PCM. Frames are already sample-interleaved, which is WAV's layout too.

This module is the one place that knows the RIFF/WAVE layout and G.711 µ-law: `consume`
writes its recordings with it, and the client (`app.client.audio`) streams WAV files, encodes
its audio and checks what it may stream on top of it.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Literal

WavEncoding = Literal["pcm16", "mulaw"]
WAV_ENCODINGS: Final[tuple[WavEncoding, ...]] = ("pcm16", "mulaw")

WAVE_FORMAT_PCM: Final = 1
WAVE_FORMAT_MULAW: Final = 7
WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE

_FORMATS: Final = {"PCMU": (WAVE_FORMAT_MULAW, 8), "L16": (WAVE_FORMAT_PCM, 16)}


# --- G.711 µ-law ----------------------------------------------------------------------------

_BIAS: Final = 0x84
_CLIP: Final = 32635


def _encode_sample(sample: int) -> int:
    # ITU-T G.191 reference: negatives use the one's complement, so -1 encodes like 0.
    sign = 0x80 if sample < 0 else 0
    magnitude = min(~sample if sample < 0 else sample, _CLIP) + _BIAS
    exponent = max(magnitude.bit_length() - 8, 0)  # position of the leading one above bit 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _decode_byte(value: int) -> int:
    value = ~value & 0xFF
    magnitude = (((value & 0x0F) << 3) + _BIAS) << ((value & 0x70) >> 4)
    return _BIAS - magnitude if value & 0x80 else magnitude - _BIAS


# Encoder table indexed by the sample's 16-bit two's-complement pattern; decoder by the byte.
_ENCODE: Final = bytes(_encode_sample(i - 0x10000 if i & 0x8000 else i) for i in range(0x10000))
_DECODE: Final = tuple(_decode_byte(b) for b in range(256))
_ULAW_TO_PCM16: Final = tuple(struct.pack("<h", sample) for sample in _DECODE)


def ulaw_encode_sample(sample: int) -> int:
    """One 16-bit linear sample -> one µ-law byte."""
    return _ENCODE[sample & 0xFFFF]


def ulaw_decode_byte(value: int) -> int:
    """One µ-law byte -> one 16-bit linear sample."""
    return _DECODE[value]


def ulaw_encode(samples: array[int]) -> bytes:
    """Signed 16-bit samples (array 'h') -> µ-law bytes."""
    unsigned = array("H", samples.tobytes())
    return bytes(map(_ENCODE.__getitem__, unsigned))


def ulaw_decode(data: bytes) -> array[int]:
    """µ-law bytes -> signed 16-bit samples (array 'h')."""
    return array("h", map(_DECODE.__getitem__, data))


def ulaw_to_pcm16(data: bytes) -> bytes:
    """µ-law bytes -> 16-bit little-endian PCM (two bytes per sample)."""
    return b"".join(map(_ULAW_TO_PCM16.__getitem__, data))


# --- 16-bit PCM, little-endian as WAV and L16 on the wire carry it ----------------------------


def pcm16_le_bytes(samples: array[int]) -> bytes:
    """Signed 16-bit samples (array 'h') -> little-endian bytes."""
    if sys.byteorder == "little":
        return samples.tobytes()
    swapped = array("h", samples)
    swapped.byteswap()
    return swapped.tobytes()


def pcm16_le_samples(data: bytes) -> array[int]:
    """Little-endian bytes -> signed 16-bit samples (a trailing odd byte is dropped)."""
    samples = array("h", data[: len(data) - len(data) % 2])
    if sys.byteorder != "little":
        samples.byteswap()
    return samples


# --- WAV files ------------------------------------------------------------------------------


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
    """A WAV file's format fields and data chunk. `sub_format` is the format tag inside
    a WAVE_FORMAT_EXTENSIBLE file's sub-format GUID (None for every other file)."""

    format_tag: int
    channels: int
    rate: int
    bits_per_sample: int
    data: bytes
    sub_format: int | None = None

    @property
    def encoding_tag(self) -> int:
        """The format tag that says how the samples are coded (the sub-format's, if any)."""
        if self.format_tag == WAVE_FORMAT_EXTENSIBLE and self.sub_format is not None:
            return self.sub_format
        return self.format_tag


def read_wav(source: Path | bytes) -> WavContent:
    """Parse a WAV file: format fields and the data chunk (ValueError when malformed)."""
    raw = source.read_bytes() if isinstance(source, Path) else source
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int, int | None] | None = None
    while pos + 8 <= len(raw):
        chunk_id = raw[pos : pos + 4]
        (size,) = struct.unpack_from("<I", raw, pos + 4)
        body = raw[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise ValueError("fmt chunk too short")
            tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", body)
            sub_format: int | None = None
            if tag == WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                (sub_format,) = struct.unpack_from("<H", body, 24)  # the GUID's first bytes
            fmt = (tag, channels, rate, bits, sub_format)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("data chunk before fmt chunk")
            return WavContent(fmt[0], fmt[1], fmt[2], fmt[3], bytes(body), fmt[4])
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    raise ValueError("no data chunk")
