"""Audio formats, media negotiation policy and frame/sample arithmetic (8000 Hz only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

SAMPLE_RATE: Final = 8000

AudioFormat: TypeAlias = Literal["PCMU", "L16"]
Channel: TypeAlias = Literal["external", "internal"]

AUDIO_FORMATS: Final[tuple[AudioFormat, ...]] = ("PCMU", "L16")
CHANNELS: Final[tuple[Channel, ...]] = ("external", "internal")
_BYTES_PER_SAMPLE: Final[dict[str, int]] = {"PCMU": 1, "L16": 2}


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """A selected audio format. Frames are headerless and sample-interleaved in `channels` order."""

    format: AudioFormat
    channels: tuple[Channel, ...]
    rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.format not in _BYTES_PER_SAMPLE:
            raise ValueError(f"unsupported audio format {self.format!r}")
        if not 1 <= len(self.channels) <= 2 or len(set(self.channels)) != len(self.channels):
            raise ValueError("channels must be one or two distinct channel names")
        if any(channel not in CHANNELS for channel in self.channels):
            raise ValueError("unknown channel name")
        if self.rate != SAMPLE_RATE:
            raise ValueError("only 8000 Hz is supported")

    @property
    def bytes_per_sample(self) -> int:
        """Bytes of one sample of one channel (PCMU 1, L16 2)."""
        return _BYTES_PER_SAMPLE[self.format]

    @property
    def channel_count(self) -> int:
        return len(self.channels)

    @property
    def bytes_per_sample_group(self) -> int:
        """Bytes holding one sample of every channel; a frame is a whole number of these."""
        return _BYTES_PER_SAMPLE[self.format] * len(self.channels)

    def is_whole_frame(self, frame_bytes: int) -> bool:
        return frame_bytes >= 0 and frame_bytes % self.bytes_per_sample_group == 0

    def sample_count(self, frame_bytes: int) -> int:
        """Samples per channel in a frame of `frame_bytes` bytes; ValueError if not whole groups."""
        if not self.is_whole_frame(frame_bytes):
            raise ValueError("frame does not hold a whole number of sample groups")
        return frame_bytes // self.bytes_per_sample_group

    def frame_bytes(self, samples: int) -> int:
        """Bytes needed for `samples` samples per channel."""
        return samples * self.bytes_per_sample_group

    def to_parameter(self) -> dict[str, Any]:
        """The MediaParameter object for this format (channel order kept)."""
        return {
            "type": "audio",
            "format": self.format,
            "channels": list(self.channels),
            "rate": self.rate,
        }

    @classmethod
    def from_offer(cls, offer: Mapping[str, Any]) -> MediaFormat | None:
        """The format described by an offered MediaParameter, or None if it is not supported."""
        fmt = offer.get("format")
        channels = offer.get("channels")
        rate = offer.get("rate")
        if offer.get("type") != "audio" or fmt not in _BYTES_PER_SAMPLE:
            return None
        if type(rate) is not int or rate != SAMPLE_RATE or not isinstance(channels, list):
            return None
        if not 1 <= len(channels) <= 2 or len(set(map(str, channels))) != len(channels):
            return None
        if any(channel not in CHANNELS for channel in channels):
            return None
        return cls(format=fmt, channels=tuple(channels), rate=rate)


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    """Which offered media to accept.

    Ranking: channel count per `prefer` (stereo first, or mono first), then the position of
    the format in `formats`, then the offer order. Offers in other formats, rates or with
    unknown channel names are never selected.
    """

    formats: tuple[AudioFormat, ...] = AUDIO_FORMATS
    prefer: Literal["stereo", "mono"] = "stereo"

    def __post_init__(self) -> None:
        if not self.formats or len(set(self.formats)) != len(self.formats):
            raise ValueError("formats must be a non-empty tuple without duplicates")
        if any(fmt not in _BYTES_PER_SAMPLE for fmt in self.formats):
            raise ValueError("unsupported audio format in policy")
        if self.prefer not in ("stereo", "mono"):
            raise ValueError("prefer must be 'stereo' or 'mono'")

    def select(
        self, offers: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, Any], MediaFormat] | None:
        """The best offer, returned verbatim (same object), with its format; None if none fits."""
        best: tuple[tuple[int, int, int], Mapping[str, Any], MediaFormat] | None = None
        for index, offer in enumerate(offers):
            if not isinstance(offer, Mapping):
                continue
            media = MediaFormat.from_offer(offer)
            if media is None or media.format not in self.formats:
                continue
            stereo = media.channel_count == 2
            channel_rank = 0 if stereo == (self.prefer == "stereo") else 1
            key = (channel_rank, self.formats.index(media.format), index)
            if best is None or key < best[0]:
                best = (key, offer, media)
        if best is None:
            return None
        offer_dict = best[1]
        if not isinstance(offer_dict, dict):
            offer_dict = dict(offer_dict)
        return offer_dict, best[2]


def samples_to_seconds(samples: int) -> float:
    return samples / SAMPLE_RATE
