"""What the publisher makes of each reply in a batch (app/publisher/outcomes.py)."""

from __future__ import annotations

import pytest
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.publisher.outcomes import DUPLICATE, FAILED, OK, RETRY, Outcome, classify

DUPLICATE_ID = "The ID specified in XADD is equal or smaller than the target stream top item"


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (b"1700000000000-0", OK),  # an XADD's entry id
        (1, OK),  # EXPIRE
        (b"OK", OK),
        (ResponseError(DUPLICATE_ID), DUPLICATE),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), FAILED),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), RETRY),
        (ResponseError("LOADING Redis is loading the dataset in memory"), RETRY),
        (ResponseError("MOVED 3999 127.0.0.1:6381"), RETRY),
        (OutOfMemoryError("command not allowed"), RETRY),
        (ReadOnlyError("You can't write against a read only replica."), RETRY),
        (BusyLoadingError("loading"), RETRY),
        (RedisConnectionError("lost"), RETRY),
        (RedisTimeoutError("timeout"), RETRY),
        (ValueError("not from redis"), FAILED),
    ],
)
def test_each_reply_has_its_outcome(reply: object, outcome: Outcome) -> None:
    assert classify(reply) is outcome
