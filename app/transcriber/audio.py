"""Session audio as the recogniser wants it: one channel of 16-bit samples at its rate."""

from __future__ import annotations

import sys
from array import array

from app.protocol.media import MediaFormat
from app.tools.wav import ulaw_decode


def channels(data: bytes, media: MediaFormat) -> list[array[int]]:
    """Interleaved frame bytes -> one array of signed 16-bit samples per channel."""
    if media.format == "PCMU":
        samples = ulaw_decode(data)
    else:  # L16, little-endian as received (docs/protocol.md §5.1)
        samples = array("h", data)
        if sys.byteorder == "big":
            samples.byteswap()
    count = media.channel_count
    if count == 1:
        return [samples]
    return [samples[index::count] for index in range(count)]


def upsample(samples: array[int], factor: int) -> array[int]:
    """Linear interpolation by an integer factor (8 kHz call audio -> a 16 kHz model).
    Telephone audio has nothing above 4 kHz, so no filter is needed beyond this."""
    if factor == 1:
        return array("h", samples)
    out = array("h", bytes(2 * factor * len(samples)))
    last = len(samples) - 1
    for index, value in enumerate(samples):
        step = (samples[min(index + 1, last)] - value) / factor
        base = index * factor
        for k in range(factor):
            out[base + k] = int(value + step * k)
    return out
