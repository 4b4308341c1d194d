"""Audio for the client: G.711 µ-law, a tone source, WAV files and 200 ms frame slicing.

Internally audio is two channels of signed 16-bit samples at 8000 Hz (`PcmAudio`); a source
encodes it once per (format, channel layout) and hands out the same immutable frame objects
to every session that streams it, so thousands of simulated calls share one copy. G.711 and
the RIFF/WAVE layout are `app.tools.wav`'s (one module for both the client and `consume`);
this module says which WAV files a call can stream and how.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, Protocol

from app.protocol.media import SAMPLE_RATE, AudioFormat, Channel, MediaFormat
from app.tools import wav
from app.tools.wav import (
    WAVE_FORMAT_MULAW,
    WAVE_FORMAT_PCM,
    pcm16_le_bytes,
    pcm16_le_samples,
    ulaw_decode,
    ulaw_encode,
)

FRAME_SAMPLES: Final = 1600  # 200 ms at 8000 Hz, as the Genesys client sends

# --- two-channel PCM ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PcmAudio:
    """Equal-length external and internal channels of signed 16-bit samples at 8000 Hz."""

    external: array[int]
    internal: array[int]

    def __post_init__(self) -> None:
        if len(self.external) != len(self.internal):
            raise ValueError("external and internal channels differ in length")

    @classmethod
    def mono(cls, samples: array[int]) -> PcmAudio:
        """Mono audio is carried on both channels, so every channel layout hears it."""
        return cls(samples, samples)

    @property
    def samples(self) -> int:
        return len(self.external)

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    def fitted(self, samples: int) -> PcmAudio:
        """Cut to `samples`, or repeat from the start until that length."""
        if samples <= self.samples or self.samples == 0:
            return PcmAudio(self.external[:samples], self.internal[:samples])
        repeats = -(-samples // self.samples)
        return PcmAudio((self.external * repeats)[:samples], (self.internal * repeats)[:samples])

    def interleaved(self, channels: Sequence[Channel]) -> array[int]:
        """Samples interleaved in `channels` order (one or two channels)."""
        picked = [self.external if name == "external" else self.internal for name in channels]
        if len(picked) == 1:
            return picked[0]
        out = array("h", bytes(2 * self.samples * len(picked)))
        for index, channel in enumerate(picked):
            out[index :: len(picked)] = channel
        return out


def tone(seconds: float, frequency: float = 1000.0, amplitude: float = 0.5) -> PcmAudio:
    """A sine tone on both channels (1 kHz at 8 kHz repeats every 8 samples)."""
    count = round(seconds * SAMPLE_RATE)
    peak = amplitude * 32767
    step = 2 * math.pi * frequency / SAMPLE_RATE
    samples = array("h", (round(peak * math.sin(step * i)) for i in range(count)))
    return PcmAudio.mono(samples)


def encode(samples: array[int], fmt: AudioFormat) -> bytes:
    """Interleaved 16-bit samples -> wire bytes (PCMU, or L16 little-endian)."""
    return ulaw_encode(samples) if fmt == "PCMU" else pcm16_le_bytes(samples)


def slice_frames(
    data: bytes, media: MediaFormat, frame_samples: int = FRAME_SAMPLES
) -> list[bytes]:
    """Cut wire bytes into frames of `frame_samples` per channel; the last may be shorter."""
    size = media.frame_bytes(frame_samples)
    return [data[offset : offset + size] for offset in range(0, len(data), size)]


def encode_frames(
    audio: PcmAudio, media: MediaFormat, frame_samples: int = FRAME_SAMPLES
) -> list[bytes]:
    """Audio as the frames a client streams for the selected `media`."""
    return slice_frames(
        encode(audio.interleaved(media.channels), media.format), media, frame_samples
    )


# --- sources --------------------------------------------------------------------------------


class AudioSource(Protocol):
    """What a session streams: frames for whichever media the server selected."""

    def frames(self, media: MediaFormat) -> Sequence[bytes]: ...


@dataclass(slots=True)
class PcmSource:
    """Frames of fixed audio, encoded once per media layout and shared by every caller.

    `ulaw` keeps a µ-law file's own bytes: they are streamed unchanged when the selected
    media has the file's layout, because decoding and re-encoding is not the identity
    (0x7F and 0xFF both mean zero).
    """

    audio: PcmAudio
    frame_samples: int = FRAME_SAMPLES
    ulaw: WavAudio | None = None
    _cache: dict[MediaFormat, list[bytes]] = field(default_factory=dict, repr=False)

    def frames(self, media: MediaFormat) -> Sequence[bytes]:
        frames = self._cache.get(media)
        if frames is None:
            frames = self._cache[media] = self._encode(media)
        return frames

    def _encode(self, media: MediaFormat) -> list[bytes]:
        file = self.ulaw
        same_layout = file is not None and (
            len(media.channels) == file.channels == 1
            or (file.channels == 2 and tuple(media.channels) == ("external", "internal"))
        )
        if file is not None and same_layout and media.format == "PCMU":
            return slice_frames(file.data, media, self.frame_samples)
        return encode_frames(self.audio, media, self.frame_samples)

    @property
    def seconds(self) -> float:
        return self.audio.seconds


def tone_source(seconds: float, frequency: float = 1000.0) -> PcmSource:
    return PcmSource(tone(seconds, frequency))


def wav_source(path: str | Path, seconds: float | None = None) -> PcmSource:
    """A WAV file; with `seconds` it is cut to that length or looped up to it."""
    wav = read_wav(path)
    audio = wav.to_pcm()
    if seconds is not None:
        audio = audio.fitted(round(seconds * SAMPLE_RATE))
    if wav.encoding != "PCMU":
        return PcmSource(audio)
    # The µ-law bytes, cut or looped exactly like the decoded samples.
    whole = wav.data[: len(wav.data) - len(wav.data) % wav.channels]
    wanted = audio.samples * wav.channels
    data = (whole * (-(-wanted // len(whole)) if whole else 0))[:wanted]
    return PcmSource(audio, ulaw=WavAudio("PCMU", wav.channels, data))


# --- WAV ------------------------------------------------------------------------------------


class WavError(ValueError):
    """The file is not a WAV this client can stream (8000 Hz, mono/stereo, PCM16 or µ-law)."""


@dataclass(frozen=True, slots=True)
class WavAudio:
    """A WAV file's sample data as stored: interleaved PCMU bytes or L16 little-endian."""

    encoding: AudioFormat
    channels: int
    data: bytes
    rate: int = SAMPLE_RATE

    def to_pcm(self) -> PcmAudio:
        """Channel 0 is external, channel 1 internal; a mono file is heard on both."""
        if self.encoding == "PCMU":
            samples = ulaw_decode(self.data[: len(self.data) - len(self.data) % self.channels])
        else:
            usable = len(self.data) - len(self.data) % (2 * self.channels)
            samples = pcm16_le_samples(self.data[:usable])
        if self.channels == 1:
            return PcmAudio.mono(samples)
        return PcmAudio(samples[0::2], samples[1::2])


def read_wav(path: str | Path) -> WavAudio:
    return parse_wav(Path(path).read_bytes())


def parse_wav(blob: bytes) -> WavAudio:
    try:
        content = wav.read_wav(blob)
    except ValueError as error:
        raise WavError(str(error)) from None
    return _wav_audio(content)


def _wav_audio(content: wav.WavContent) -> WavAudio:
    tag, channels, rate, bits = (
        content.encoding_tag,
        content.channels,
        content.rate,
        content.bits_per_sample,
    )
    if rate != SAMPLE_RATE:
        raise WavError(f"sample rate is {rate} Hz; AudioHook audio is 8000 Hz")
    if channels not in (1, 2):
        raise WavError(f"{channels} channels; only mono or stereo is supported")
    if tag == WAVE_FORMAT_PCM and bits == 16:
        return WavAudio("L16", channels, content.data)
    if tag == WAVE_FORMAT_MULAW and bits == 8:
        return WavAudio("PCMU", channels, content.data)
    raise WavError(f"unsupported WAV encoding (format tag {tag}, {bits} bits)")


def wav_bytes(data: bytes, *, encoding: AudioFormat, channels: int) -> bytes:
    """A WAV file holding interleaved PCMU bytes or L16 little-endian samples."""
    if channels not in (1, 2):
        raise ValueError("channels must be 1 or 2")
    return wav.wav_bytes(encoding, channels, SAMPLE_RATE, data)


def write_wav(path: str | Path, data: bytes, *, encoding: AudioFormat, channels: int) -> None:
    Path(path).write_bytes(wav_bytes(data, encoding=encoding, channels=channels))


def pcm_wav_bytes(audio: PcmAudio, *, layout: Literal["mono", "stereo"] = "stereo") -> bytes:
    """16-bit PCM WAV of `audio`: stereo is external then internal; mono is the external channel."""
    channels: tuple[Channel, ...] = (
        ("external", "internal") if layout == "stereo" else ("external",)
    )
    data = pcm16_le_bytes(audio.interleaved(channels))
    return wav_bytes(data, encoding="L16", channels=len(channels))
