"""The count of connections per source address that have not sent their request head."""

from __future__ import annotations

import pytest

from app.transport.source_limiter import SourceConnectionLimit


def test_a_source_holds_up_to_the_limit_and_others_keep_their_own() -> None:
    limit = SourceConnectionLimit(3)
    assert [limit.hold("192.0.2.1") for _ in range(4)] == [True, True, True, False]
    assert limit.held("192.0.2.1") == 3  # the refusal took nothing
    assert limit.hold("192.0.2.2")


def test_a_released_place_can_be_taken_again_and_an_address_leaves_with_its_last() -> None:
    limit = SourceConnectionLimit(2)
    limit.hold("192.0.2.1")
    limit.hold("192.0.2.1")
    limit.release("192.0.2.1")
    assert limit.hold("192.0.2.1")
    assert not limit.hold("192.0.2.1")
    limit.release("192.0.2.1")
    limit.release("192.0.2.1")
    assert len(limit) == 0  # memory follows the open connections, not the addresses seen
    assert limit.held("192.0.2.1") == 0


def test_releasing_a_place_never_taken_is_a_bug_that_shows() -> None:
    with pytest.raises(KeyError):
        SourceConnectionLimit(2).release("192.0.2.1")
