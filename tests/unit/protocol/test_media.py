"""Media formats, negotiation and frame arithmetic (docs/protocol.md §5)."""

from __future__ import annotations

from typing import Any

import pytest

from app.protocol.media import MediaFormat, MediaPolicy, samples_to_seconds
from tests.unit.protocol.helpers import (
    L16_STEREO,
    MONO_EXTERNAL,
    MONO_INTERNAL,
    STEREO,
    STEREO_INVERTED,
)

STEREO_T = ("external", "internal")
L16_MONO = {"type": "audio", "format": "L16", "channels": ["internal"], "rate": 8000}


def test_select_prefers_stereo_and_returns_offer_verbatim() -> None:
    offers = [dict(MONO_EXTERNAL), dict(STEREO), dict(MONO_INTERNAL)]
    selection = MediaPolicy().select(offers)
    assert selection is not None
    offer, media = selection
    assert offer is offers[1]
    assert media == MediaFormat("PCMU", ("external", "internal"))


def test_select_keeps_inverted_channel_order() -> None:
    offers = [dict(STEREO_INVERTED), dict(MONO_INTERNAL), dict(MONO_EXTERNAL)]
    selection = MediaPolicy().select(offers)
    assert selection is not None
    offer, media = selection
    assert offer == STEREO_INVERTED
    assert offer["channels"] == ["internal", "external"]
    assert media.channels == ("internal", "external")


def test_select_prefer_mono_takes_first_mono_offer() -> None:
    selection = MediaPolicy(prefer="mono").select([STEREO, MONO_INTERNAL, MONO_EXTERNAL])
    assert selection is not None
    assert selection[0] == MONO_INTERNAL


def test_select_prefer_mono_falls_back_to_stereo() -> None:
    selection = MediaPolicy(prefer="mono").select([STEREO])
    assert selection is not None
    assert selection[0] == STEREO


def test_select_prefer_stereo_falls_back_to_mono() -> None:
    selection = MediaPolicy().select([MONO_INTERNAL, MONO_EXTERNAL])
    assert selection is not None
    assert selection[0] == MONO_INTERNAL


def test_select_format_order_within_channel_rank() -> None:
    assert MediaPolicy().select([L16_STEREO, STEREO]) == (STEREO, MediaFormat("PCMU", STEREO_T))
    l16_first = MediaPolicy(formats=("L16", "PCMU")).select([STEREO, L16_STEREO])
    assert l16_first is not None
    assert l16_first[0] == L16_STEREO
    assert l16_first[1].bytes_per_sample_group == 4


def test_select_channel_rank_beats_format_order() -> None:
    selection = MediaPolicy(formats=("L16", "PCMU")).select([L16_MONO, STEREO])
    assert selection is not None
    assert selection[0] == STEREO


def test_select_offer_order_breaks_ties() -> None:
    selection = MediaPolicy().select([STEREO_INVERTED, STEREO])
    assert selection is not None
    assert selection[0] == STEREO_INVERTED


@pytest.mark.parametrize(
    "offers",
    [
        [],
        [L16_STEREO, L16_MONO],  # policy is PCMU only below
        [{**STEREO, "rate": 16000}],
        [{**STEREO, "type": "video"}],
        [{**STEREO, "format": "OPUS"}],
        [{**STEREO, "channels": ["external", "external"]}],
        [{**STEREO, "channels": ["left", "right"]}],
        [{**STEREO, "channels": []}],
        ["PCMU"],
    ],
)
def test_select_none(offers: list[Any]) -> None:
    assert MediaPolicy(formats=("PCMU",)).select(offers) is None


def test_select_skips_unusable_offer_and_takes_next() -> None:
    selection = MediaPolicy().select([{**STEREO, "rate": 16000}, MONO_EXTERNAL])
    assert selection is not None
    assert selection[0] == MONO_EXTERNAL


@pytest.mark.parametrize(
    "kwargs",
    [{"formats": ()}, {"formats": ("PCMU", "PCMU")}, {"formats": ("OPUS",)}, {"prefer": "quad"}],
)
def test_policy_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MediaPolicy(**kwargs)


@pytest.mark.parametrize(
    ("media", "group"),
    [
        (MediaFormat("PCMU", ("external",)), 1),
        (MediaFormat("PCMU", ("external", "internal")), 2),
        (MediaFormat("L16", ("internal",)), 2),
        (MediaFormat("L16", ("internal", "external")), 4),
    ],
)
def test_sample_group_sizes(media: MediaFormat, group: int) -> None:
    assert media.bytes_per_sample_group == group
    assert media.bytes_per_sample * media.channel_count == group
    assert media.sample_count(0) == 0
    assert media.sample_count(1600 * group) == 1600
    assert media.frame_bytes(1600) == 1600 * group
    assert media.is_whole_frame(group * 7)


@pytest.mark.parametrize(
    ("media", "size"),
    [
        (MediaFormat("PCMU", ("external", "internal")), 3201),
        (MediaFormat("L16", ("internal",)), 3),
        (MediaFormat("L16", ("internal", "external")), 6402),  # even, but not whole groups
        (MediaFormat("L16", ("internal", "external")), 2),
    ],
)
def test_partial_sample_groups_are_rejected(media: MediaFormat, size: int) -> None:
    assert not media.is_whole_frame(size)
    with pytest.raises(ValueError):
        media.sample_count(size)


def test_media_format_to_parameter_and_from_offer() -> None:
    media = MediaFormat.from_offer(STEREO_INVERTED)
    assert media == MediaFormat("PCMU", ("internal", "external"))
    assert media is not None
    assert media.to_parameter() == STEREO_INVERTED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"format": "OPUS", "channels": ("external",)},
        {"format": "PCMU", "channels": ()},
        {"format": "PCMU", "channels": ("external", "external")},
        {"format": "PCMU", "channels": ("left",)},
        {"format": "PCMU", "channels": ("external",), "rate": 16000},
    ],
)
def test_media_format_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MediaFormat(**kwargs)


def test_samples_to_seconds() -> None:
    assert samples_to_seconds(12000) == 1.5
