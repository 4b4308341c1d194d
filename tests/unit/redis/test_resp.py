"""The gateway's own RESP packing gives redis-py's bytes, byte for byte.

`app.redis.resp.pack_commands` replaces redis-py's `pack_commands` on the publisher's hot
path (a %-format per command instead of joins per argument). It must stay equal to it for
every argument the gateway passes: str (any Unicode), bytes (any, CR/LF included) and int
(any sign and size). One difference is by design: redis-py splits a command name that
contains spaces ("CONFIG GET") into two arguments; the gateway never names a command so,
and the names generated here have no whitespace.
"""

from __future__ import annotations

from typing import Any

import redis.connection
from hypothesis import given, settings
from hypothesis import strategies as st

from app.redis.resp import pack_commands, pack_head

# Constructing a connection does not connect: it only holds the encoder pack_commands uses.
REFERENCE = redis.connection.Connection()

command_names = st.text(
    alphabet=st.characters(categories=("Lu", "Ll", "Nd", "Pc")), min_size=1, max_size=12
)
arguments = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100),
    st.integers(),
    st.sampled_from([b"", "", 0, -1, b"\r\n", "\r\n$3\r\n", b"*1\r\n", 2**64, -(2**63)]),
)
commands = st.tuples(command_names, st.lists(arguments, max_size=20)).map(
    lambda pair: (pair[0], *pair[1])
)


def _reference(batch: list[tuple[Any, ...]]) -> bytes:
    return b"".join(bytes(chunk) for chunk in REFERENCE.pack_commands(batch))


@settings(max_examples=1000, deadline=None)
@given(st.lists(commands, min_size=1, max_size=5))
def test_pack_commands_equals_redis_py(batch: list[tuple[Any, ...]]) -> None:
    packed = pack_commands(list(batch))
    assert len(packed) == len(batch)  # one bytes object per command
    assert b"".join(packed) == _reference(batch)
    for command, ours in zip(batch, packed, strict=True):
        assert ours == _reference([command])


@settings(max_examples=200, deadline=None)
@given(commands, st.data())
def test_pack_head_is_a_prefix_of_the_whole_command(command: tuple[Any, ...], data: Any) -> None:
    # The publisher packs a command's head once and appends the rest of its arguments.
    cut = data.draw(st.integers(min_value=1, max_value=len(command)))
    head_args = tuple(
        str(arg) if isinstance(arg, int) else arg for arg in command[:cut]
    )  # pack_head takes str/bytes
    whole = (*head_args, *command[cut:])
    rest = pack_commands([("X", *command[cut:])])[0]
    tail = rest.removeprefix(b"*%d\r\n$1\r\nX\r\n" % (len(command) - cut + 1))
    assert pack_head(len(command), *head_args) + tail == _reference([whole])


def test_already_packed_pieces_pass_through() -> None:
    pieces = [b"*1\r\n", b"$4\r\nPING\r\n"]
    assert pack_commands([pieces, ("PING",)]) == [*pieces, _reference([("PING",)])]
