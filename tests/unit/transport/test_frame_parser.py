"""The direct-mode frame parser against frames from the `websockets` library's own client."""

from __future__ import annotations

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from app.transport.frames import FRAME_BURST, FRAME_RATE, FrameError, FrameParser

MAX_SIZE = 300_000


class Recorder:
    def __init__(self, max_size: int = MAX_SIZE) -> None:
        self.events: list[tuple[str, object]] = []
        self.parser = FrameParser(max_size, self.message, self.control)

    def message(self, data: bytes | str) -> None:
        self.events.append(("message", data))

    def control(self, opcode: int, payload: bytes) -> None:
        self.events.append((f"control {opcode:#x}", payload))

    def feed_all(self, wire: bytes, chunk: int | None = None) -> None:
        step = chunk or len(wire) or 1
        for start in range(0, len(wire), step):
            self.parser.feed(wire[start : start + step])


def open_client() -> ClientProtocol:
    """A client protocol past its opening handshake (answered by websockets' server)."""
    client = ClientProtocol(parse_uri("ws://127.0.0.1/"), max_size=None)
    server = ServerProtocol()
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    [request] = server.events_received()
    server.send_response(server.accept(request))  # type: ignore[arg-type]
    client.receive_data(b"".join(server.data_to_send()))
    return client


def wire(client: ClientProtocol) -> bytes:
    return b"".join(client.data_to_send())


def unmasked(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(opcode, payload).serialize(mask=False, extensions=[])


def masked(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=True, extensions=[])


def first_byte(frame: bytes, value: int) -> bytes:
    """`frame` with its first byte (FIN, RSV1-3, opcode) replaced: frames websockets refuses
    to build."""
    return bytes([value]) + frame[1:]


def test_messages_of_one_read_arrive_whole_and_in_order() -> None:
    client = open_client()
    audio = bytes(range(256)) * 13
    client.send_binary(audio)
    client.send_text("héllo ✓".encode())
    client.send_binary(b"")
    client.send_text(b"")
    recorder = Recorder()
    recorder.feed_all(wire(client))
    assert recorder.events == [
        ("message", audio),
        ("message", "héllo ✓"),
        ("message", b""),
        ("message", ""),
    ]
    assert type(recorder.events[0][1]) is bytes


@pytest.mark.parametrize("length", [125, 126, 65_535, 65_536, MAX_SIZE])
def test_every_length_encoding(length: int) -> None:
    client = open_client()
    payload = bytes(index % 251 for index in range(length))
    client.send_binary(payload)
    recorder = Recorder()
    recorder.feed_all(wire(client), chunk=4096)
    assert recorder.events == [("message", payload)]


def test_any_split_of_the_stream_gives_the_same_messages() -> None:
    client = open_client()
    client.send_binary(bytes(range(200)))
    client.send_text(b"x" * 300)  # a 16-bit length
    client.send_ping(b"p")
    client.send_binary(b"\x01\x02", fin=False)
    client.send_continuation(b"\x03", fin=True)
    data = wire(client)
    whole = Recorder()
    whole.feed_all(data)
    assert len(whole.events) == 4
    for split in range(1, len(data)):
        recorder = Recorder()
        recorder.parser.feed(data[:split])
        recorder.parser.feed(data[split:])
        assert recorder.events == whole.events, split
    trickled = Recorder()
    trickled.feed_all(data, chunk=1)
    assert trickled.events == whole.events


def test_fragmented_messages_with_control_frames_between_fragments() -> None:
    client = open_client()
    text = "ünïcode split across fragments".encode()
    client.send_text(text[:1], fin=False)  # the first fragment ends inside a character
    client.send_ping(b"in between")
    client.send_continuation(text[1:10], fin=False)
    client.send_pong(b"pong too")
    client.send_continuation(text[10:], fin=True)
    client.send_binary(b"ab", fin=False)
    client.send_continuation(b"", fin=False)
    client.send_continuation(b"cd", fin=True)
    recorder = Recorder()
    recorder.feed_all(wire(client))
    assert recorder.events == [
        ("control 0x9", b"in between"),
        ("control 0xa", b"pong too"),
        ("message", text.decode()),
        ("message", b"abcd"),
    ]


def test_close_frame_goes_to_control() -> None:
    client = open_client()
    client.send_binary(b"last")
    client.send_close(1000, "bye")
    recorder = Recorder()
    recorder.feed_all(wire(client))
    assert recorder.events == [("message", b"last"), ("control 0x8", b"\x03\xe8bye")]


def failure(data: bytes, max_size: int = MAX_SIZE) -> tuple[int, list[tuple[str, object]]]:
    """Feed `data`; the close code the parser fails with, and what it delivered before."""
    recorder = Recorder(max_size)
    with pytest.raises(FrameError) as raised:
        recorder.parser.feed(data)
    return raised.value.code, recorder.events


def test_an_oversized_frame_fails_1009_on_its_header_after_the_frames_before_it() -> None:
    client = open_client()
    client.send_binary(b"good")
    client.send_binary(bytes(MAX_SIZE + 1))
    data = wire(client)
    good_frame = 2 + 4 + 4  # header, masking key, payload
    big_header = 2 + 8 + 4  # a 64-bit length
    # Refused on its header alone: the payload is never waited for.
    assert failure(data[: good_frame + big_header]) == (1009, [("message", b"good")])


def test_a_fragmented_message_over_the_limit_fails_1009() -> None:
    client = open_client()
    client.send_binary(bytes(600), fin=False)
    client.send_continuation(bytes(600), fin=False)
    assert failure(wire(client), max_size=1000)[0] == 1009


def test_invalid_utf8_text_fails_1007() -> None:
    client = open_client()
    client.send_binary(b"ok")
    client.send_text(b"\xff\xfe")
    assert failure(wire(client)) == (1007, [("message", b"ok")])


def test_a_close_reason_is_checked_by_the_protocol_not_the_parser() -> None:
    recorder = Recorder()
    recorder.parser.feed(masked(Opcode.CLOSE, b"\x03\xe8\xff"))
    assert recorder.events == [("control 0x8", b"\x03\xe8\xff")]


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(unmasked(Opcode.BINARY, b"audio"), id="unmasked client frame"),
        pytest.param(first_byte(masked(Opcode.BINARY, b"x"), 0xC2), id="RSV1 without extension"),
        pytest.param(first_byte(masked(Opcode.BINARY, b"x"), 0x92), id="RSV3"),
        pytest.param(first_byte(masked(Opcode.BINARY, b"x"), 0x83), id="reserved opcode 0x3"),
        pytest.param(first_byte(masked(Opcode.PING, b"x"), 0x8B), id="reserved opcode 0xb"),
        pytest.param(masked(Opcode.CONT, b"x"), id="continuation with nothing to continue"),
        pytest.param(first_byte(masked(Opcode.PING, b"x"), 0x09), id="fragmented control frame"),
        pytest.param(bytes([0x89, 0xFE, 0x00, 0x7E]) + bytes(4 + 126), id="control over 125"),
        pytest.param(
            masked(Opcode.TEXT, b"a", fin=False) + masked(Opcode.BINARY, b"b"),
            id="new message inside a fragmented one",
        ),
    ],
)
def test_protocol_violations_fail_1002(frame: bytes) -> None:
    assert failure(frame)[0] == 1002


def test_the_frame_budget_is_a_burst_then_a_rate_refilled_by_the_time_between_reads() -> None:
    recorder = Recorder()
    parser = FrameParser(MAX_SIZE, recorder.message, recorder.control, now=100.0)
    frame = masked(Opcode.BINARY, b"\0" * 10)
    parser.receive(frame * FRAME_BURST, 100.0)  # the whole burst in one read
    assert parser.frames_left == 0
    parser.receive(frame * (FRAME_RATE // 2), 100.5)  # half a second: half the rate again
    assert parser.frames_left == 0
    parser.receive(b"", 1000.0)  # a long pause refills no more than the burst
    assert parser.frames_left == FRAME_BURST
    parser.frames_left = 0
    with pytest.raises(FrameError, match="too many frames") as failed:
        parser.receive(frame, 1000.0)
    assert failed.value.code == 1008
    assert len(recorder.events) == FRAME_BURST + FRAME_RATE // 2
