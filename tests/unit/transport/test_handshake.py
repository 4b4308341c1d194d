"""The plain upgrade: recognised on httptools' parse, and never where websockets (which would
otherwise parse, check and answer the head) would answer anything but the same 101."""

from __future__ import annotations

import pytest
from websockets.http11 import Request
from websockets.server import ServerProtocol

from app.transport.handshake import MAX_HEADERS, accept_value, plain_upgrade_key, valid_header

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's example
SHORT_KEY = b"YWJjZGVmZ2hpamtsbW5v"  # 15 bytes
TARGET = b"/api/v1/audiohook/ws"
PLAIN = [
    (b"host", b"127.0.0.1:8080"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
    (b"audiohook-session-id", b"30b0e395-84d3-4570-ac13-9a62d8f514c0"),
]


def with_header(name: bytes, value: bytes | None) -> list[tuple[bytes, bytes]]:
    """PLAIN with `name` set to `value` (None: left out)."""
    kept = [(n, v) for n, v in PLAIN if n != name]
    return kept if value is None else [*kept, (name, value)]


def websockets_answer(
    method: bytes, version: str, target: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes | None]:
    """What websockets (no extensions, as the gateway runs it) answers: status, accept."""
    server = ServerProtocol()
    head = b"%s %s HTTP/%s\r\n" % (method, target, version.encode())
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    server.receive_data(head + b"\r\n")
    events = server.events_received()
    if not events or not isinstance(events[0], Request):
        return 0, None  # its parser refused the head
    response = server.accept(events[0])
    accept = response.headers.get("Sec-WebSocket-Accept")
    return response.status_code, None if accept is None else accept.encode()


def test_the_accept_value_of_rfc_6455() -> None:
    assert accept_value(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


NOT_PLAIN = {
    "POST": (b"POST", "1.1", TARGET, PLAIN),
    "HTTP/1.0": (b"GET", "1.0", TARGET, PLAIN),
    "absolute target": (b"GET", "1.1", b"http://127.0.0.1" + TARGET, PLAIN),
    "fragment": (b"GET", "1.1", TARGET + b"#x", PLAIN),
    "non-ASCII target": (b"GET", "1.1", TARGET + b"\xe9", PLAIN),
    "target over a line": (b"GET", "1.1", TARGET + b"?" + b"a" * 8200, PLAIN),
    "no Connection: upgrade": (b"GET", "1.1", TARGET, with_header(b"connection", b"close")),
    "bad Connection token": (b"GET", "1.1", TARGET, with_header(b"connection", b"upgrade;x")),
    "Upgrade: h2c": (b"GET", "1.1", TARGET, with_header(b"upgrade", b"h2c")),
    "two protocols": (b"GET", "1.1", TARGET, with_header(b"upgrade", b"websocket, h2c")),
    "two Upgrade headers": (b"GET", "1.1", TARGET, [*PLAIN, (b"upgrade", b"websocket")]),
    "no key": (b"GET", "1.1", TARGET, with_header(b"sec-websocket-key", None)),
    "key not base64": (b"GET", "1.1", TARGET, with_header(b"sec-websocket-key", b"not base64!")),
    "15-byte key": (b"GET", "1.1", TARGET, with_header(b"sec-websocket-key", SHORT_KEY)),
    "two keys": (b"GET", "1.1", TARGET, [*PLAIN, (b"sec-websocket-key", KEY)]),
    "version 8": (b"GET", "1.1", TARGET, with_header(b"sec-websocket-version", b"8")),
    "two versions": (b"GET", "1.1", TARGET, [*PLAIN, (b"sec-websocket-version", b"13")]),
    "subprotocols": (b"GET", "1.1", TARGET, [*PLAIN, (b"sec-websocket-protocol", b"audiohook")]),
    "two origins": (b"GET", "1.1", TARGET, [*PLAIN, (b"origin", b"a"), (b"origin", b"b")]),
    "line over 8 KiB": (b"GET", "1.1", TARGET, [*PLAIN, (b"x-pad", b"a" * 8200)]),
    "too many headers": (
        b"GET",
        "1.1",
        TARGET,
        PLAIN + [(b"x-h%d" % n, b"1") for n in range(MAX_HEADERS)],
    ),
    "bad name": (b"GET", "1.1", TARGET, [*PLAIN, (b"x h", b"1")]),
    "control character": (b"GET", "1.1", TARGET, [*PLAIN, (b"x-h", b"a\x01b")]),
    "trailing space": (b"GET", "1.1", TARGET, with_header(b"audiohook-session-id", b"a ")),
    "chunked body": (b"GET", "1.1", TARGET, [*PLAIN, (b"transfer-encoding", b"chunked")]),
    "a body": (b"GET", "1.1", TARGET, [*PLAIN, (b"content-length", b"5")]),
}


@pytest.mark.parametrize("case", NOT_PLAIN, ids=list(NOT_PLAIN))
def test_anything_but_a_plain_upgrade_goes_the_general_way(case: str) -> None:
    method, version, target, headers = NOT_PLAIN[case]
    assert plain_upgrade_key(method, version, target, headers, extensions_ignored=True) is None


PLAIN_TOO = {
    "as Genesys sends it": PLAIN,
    "Upgrade: WebSocket": with_header(b"upgrade", b"WebSocket"),
    "Connection: keep-alive, Upgrade": with_header(b"connection", b"keep-alive, Upgrade"),
    "an origin": [*PLAIN, (b"origin", b"https://example.com")],
    "an extensions offer": [*PLAIN, (b"sec-websocket-extensions", b"permessage-deflate")],
    "a query": PLAIN,
}


@pytest.mark.parametrize("case", PLAIN_TOO, ids=list(PLAIN_TOO))
def test_a_plain_upgrade_is_one_websockets_accepts_with_the_same_key(case: str) -> None:
    target = TARGET + b"?a=1" if case == "a query" else TARGET
    headers = PLAIN_TOO[case]
    key = plain_upgrade_key(b"GET", "1.1", target, headers, extensions_ignored=True)
    assert key == KEY
    assert websockets_answer(b"GET", "1.1", target, headers) == (101, accept_value(KEY))


def test_a_header_with_a_line_break_or_trailing_space_is_not_valid() -> None:
    assert valid_header(b"server", b"uvicorn")
    assert valid_header(b"x-empty", b"")
    assert not valid_header(b"x-split", b"a\r\nset-cookie: b")
    assert not valid_header(b"x-trail", b"a\t")
    assert not valid_header(b"bad name", b"a")


def test_an_extensions_offer_is_plain_only_where_the_server_has_none() -> None:
    offer = [*PLAIN, (b"sec-websocket-extensions", b"permessage-deflate")]
    assert plain_upgrade_key(b"GET", "1.1", TARGET, offer, extensions_ignored=False) is None


@pytest.mark.parametrize("case", NOT_PLAIN, ids=list(NOT_PLAIN))
def test_what_websockets_refuses_is_never_plain(case: str) -> None:
    """The converse, where websockets refuses: the general way keeps its answers."""
    method, version, target, headers = NOT_PLAIN[case]
    status, _ = websockets_answer(method, version, target, headers)
    if status != 101:
        assert plain_upgrade_key(method, version, target, headers, True) is None
