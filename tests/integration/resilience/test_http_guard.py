"""Requests the HTTP layer accepts but the WebSocket layer refuses, heads that never end,
bodies that never end: each is answered or closed, counted, and charged to its source, over
raw sockets against the real gateway process (docs/http-guard.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.redis.embedded import EmbeddedRedis
from app.transport.ws_protocol import MAX_BYTES_BEFORE_RESPONSE
from tests.integration.gateway.helpers import wait_for_log
from tests.integration.resilience.helpers import gateway_process, good_call, readyz, refused
from tests.integration.resilience.wire import Refused, WireClient
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import PROTOCOL_ERRORS, REJECTED, metric_value, wait_for_metric

DEADLINE = 1.0  # OPEN_TIMEOUT_SECONDS: the deadline until the application takes over
HANG_GUARD = 10.0  # generous bound on anything the server must do
WS_PATH = b"/api/v1/audiohook/ws"
UPGRADE = (
    b"GET " + WS_PATH + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


@dataclass(frozen=True)
class Malformed:
    name: str
    request: bytes
    status: bytes | None  # the expected status line prefix; None: closed, no answer
    cause: str


MALFORMED = [
    Malformed(
        "chunked upgrade", UPGRADE + b"Transfer-Encoding: chunked\r\n\r\n", b"400", "bad_request"
    ),
    Malformed("upgrade with a body", UPGRADE + b"Content-Length: 5\r\n\r\n", b"400", "bad_request"),
    # Heads the HTTP parser takes for an upgrade but the WebSocket handshake parser refuses.
    Malformed(
        "request line over 8 KB",
        UPGRADE.replace(WS_PATH, WS_PATH + b"?" + b"a" * 9000) + b"\r\n",
        b"431",
        "request_head_too_large",
    ),
    Malformed(
        "129 headers",
        UPGRADE + b"".join(b"X-H%d: 1\r\n" % n for n in range(129)) + b"\r\n",
        b"431",
        "request_head_too_large",
    ),
    Malformed(
        "header line over 8 KB",
        UPGRADE + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n",
        b"431",
        "request_head_too_large",
    ),
    # The server closes after 16 KiB with the rest unread, so the answer may be lost to a reset.
    Malformed(
        "1 MB URL",
        b"GET " + WS_PATH + b"?" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        None,
        "request_head_too_large",
    ),
    Malformed("head that never ends", UPGRADE, None, "request_timeout"),
    # Heads the WebSocket handshake parser takes but refuses to upgrade: it answers them itself.
    Malformed(
        "WebSocket version 8",
        UPGRADE.replace(b"Version: 13", b"Version: 8") + b"\r\n",
        b"4",
        "bad_request",
    ),
    Malformed(
        "no Sec-WebSocket-Key",
        UPGRADE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b"") + b"\r\n",
        b"400",
        "bad_request",
    ),
]


@pytest.fixture(scope="module")
def gateway(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    settings = {"OPEN_TIMEOUT_SECONDS": str(DEADLINE)}
    with gateway_process(redis_server, tmp_path_factory.mktemp("guard"), settings) as process:
        yield process


def dial(
    gateway: GatewayProcess, source: str = "127.0.0.1", port: int | None = None
) -> socket.socket:
    """A socket from `source` to the gateway's main listener, or to `port`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(DEADLINE + HANG_GUARD)
    sock.connect(("127.0.0.1", port or gateway.port))
    return sock


def send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def send_then_peek(sock: socket.socket, data: bytes) -> tuple[bytes, bool]:
    """Send `data`, then take what the server has sent so far without waiting:
    (those bytes, whether the server has closed or reset the connection)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return b"", True
    sock.setblocking(False)
    try:
        chunk = sock.recv(65536)
    except BlockingIOError:
        return b"", False
    except ConnectionResetError:
        return b"", True
    finally:
        sock.settimeout(DEADLINE + HANG_GUARD)
    return chunk, chunk == b""


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; AssertionError if it keeps the socket."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
            assert len(received) < 1 << 20, "an unbounded answer"
    except TimeoutError:
        raise AssertionError(f"the server kept the socket; received {received[:80]!r}") from None
    except ConnectionResetError:
        pass
    return received


def open_fds(gateway: GatewayProcess) -> int:
    assert gateway.process is not None
    return len(os.listdir(f"/proc/{gateway.process.pid}/fd"))


def settled_fds(gateway: GatewayProcess, at_most: int) -> int:
    """The gateway's open descriptors once they fall to `at_most` (or after HANG_GUARD)."""
    give_up = time.monotonic() + HANG_GUARD
    while (count := open_fds(gateway)) > at_most and time.monotonic() < give_up:
        time.sleep(0.1)
    return count


@pytest.mark.parametrize("case", MALFORMED, ids=[case.name for case in MALFORMED])
async def test_malformed_request_is_answered_and_closed(
    gateway: GatewayProcess, case: Malformed
) -> None:
    before = metric_value(gateway, REJECTED, cause=case.cause)
    with dial(gateway) as sock:
        send(sock, case.request)
        answer = until_closed(sock)
    if case.status is not None:
        assert answer.startswith(b"HTTP/1.1 " + case.status), answer[:200]
    else:
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
    assert metric_value(gateway, REJECTED, cause=case.cause) == before + 1
    assert readyz(gateway) == 200


async def test_head_sent_one_byte_per_100_ms_is_closed(gateway: GatewayProcess) -> None:
    before = metric_value(gateway, REJECTED, cause="request_timeout")
    request = UPGRADE + b"X-Pad: " + b"a" * 1000  # more bytes than the deadline lets through
    with dial(gateway) as sock:
        closed = False
        for byte in request:
            time.sleep(0.1)
            _, closed = send_then_peek(sock, bytes([byte]))
            if closed:
                break
        assert closed, "a head trickled one byte at a time was kept open"
    assert metric_value(gateway, REJECTED, cause="request_timeout") == before + 1


@pytest.mark.parametrize(
    "head",
    [
        b"POST " + WS_PATH + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET " + WS_PATH + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
        b"Content-Length: 1000000000\r\n\r\n",
    ],
    ids=["content-length", "chunked", "connection-upgrade-without-upgrade"],
)
async def test_plain_request_with_a_never_ending_body_is_answered_and_closed(
    gateway: GatewayProcess, head: bytes
) -> None:
    chunked = b"chunked" in head
    piece = b"1000\r\n" + b"x" * 4096 + b"\r\n" if chunked else b"x" * 4096
    with dial(gateway) as sock:
        send(sock, head)
        answer, closed = b"", False
        for _ in range(int((DEADLINE + HANG_GUARD) / 0.01)):  # the body never ends
            chunk, closed = send_then_peek(sock, piece)
            answer += chunk
            if closed:
                break
            time.sleep(0.01)
        assert closed, f"a request with a never-ending body kept the socket; got {answer[:80]!r}"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]


async def test_many_malformed_sockets_at_once(gateway: GatewayProcess) -> None:
    """200 malformed sockets at once: the gateway still serves a good call and /readyz, and
    its open descriptors come back once every socket has been answered or closed."""
    await good_call(gateway)  # any descriptors a first call opens (Redis pool) are in use
    baseline = open_fds(gateway)
    kinds = [case for case in MALFORMED if case.name != "1 MB URL"]
    sockets = []
    try:
        for index in range(200):
            sock = dial(gateway)
            send(sock, kinds[index % len(kinds)].request)
            sockets.append(sock)
        await good_call(gateway)
        assert readyz(gateway) == 200
        for sock in sockets:
            until_closed(sock)
    finally:
        for sock in sockets:
            sock.close()
    assert settled_fds(gateway, baseline + 5) <= baseline + 5
    await good_call(gateway)
    assert readyz(gateway) == 200


async def test_malformed_requests_count_against_the_source_rate_limit(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    settings = {"UPGRADES_PER_SECOND_PER_SOURCE": "0.01", "UPGRADE_BURST_PER_SOURCE": "3"}
    with gateway_process(redis_server, tmp_path, settings) as gateway:
        for case in MALFORMED[:3]:
            with dial(gateway, source="127.0.0.5") as sock:
                send(sock, case.request)
                assert until_closed(sock).startswith(b"HTTP/1.1 4")
        with pytest.raises(Refused) as refusal:
            await good_call(gateway, source="127.0.0.5")
        assert refusal.value.status == 429
        await good_call(gateway, source="127.0.0.6")  # another source keeps its budget


async def test_clients_of_one_ipv6_network_share_its_upgrade_budget(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """A host may send from any address of its /64, so the budget is the network's: behind a
    trusted proxy (127.0.0.1), X-Forwarded-For names a new address of one /64 every time. The
    addresses are documentation ones (RFC 3849), only ever header values."""
    settings = {
        "UPGRADES_PER_SECOND_PER_SOURCE": "0.01",
        "UPGRADE_BURST_PER_SOURCE": "3",
        "TRUSTED_PROXIES": '["127.0.0.1/32"]',
    }

    def forwarded_for(address: str) -> dict[str, str]:
        return {"X-Forwarded-For": address}

    with gateway_process(redis_server, tmp_path, settings) as gateway:
        # A malformed upgrade, answered by the HTTP guard, is charged to the network too.
        with dial(gateway) as sock:
            send(sock, MALFORMED[0].request[:-2] + b"X-Forwarded-For: 2001:db8:0:1::a\r\n\r\n")
            assert until_closed(sock).startswith(b"HTTP/1.1 400")
        for address in ("2001:db8:0:1::b", "2001:db8:0:1:ffff::c"):
            client = await WireClient.connect(gateway.ws_url, headers=forwarded_for(address))
            await client.aclose()
        answer = await refused(gateway.ws_url, headers=forwarded_for("2001:db8:0:1::d"))
        assert answer.status == 429
        client = await WireClient.connect(gateway.ws_url, headers=forwarded_for("2001:db8:0:2::1"))
        await client.aclose()  # the next /64 keeps its own budget
        record = await wait_for_log(
            gateway, lambda r: r.get("cause") == "rate_limited" and r.get("status") == 429
        )
        assert record["client_address"] == "2001:db8:0:1::d"  # logged as the address it is


# --- connections that never finish their request head ----------------------------------------

UNFINISHED_LIMIT = 8  # MAX_UNFINISHED_REQUESTS_PER_SOURCE
PROXY = "127.0.0.9"  # a trusted proxy: it speaks for many clients


def all_taken(gateway: GatewayProcess, port: int | None = None) -> None:
    """Return once the listener has taken every connection made before: it answers a request
    on a later one (from an address of its own), and a listener accepts in order."""
    with dial(gateway, "127.0.0.1", port) as witness:
        send(witness, b"GET /witness HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert until_closed(witness).startswith(b"HTTP/1.1 404")


def still_open(sock: socket.socket) -> bool:
    """Whether the server has neither answered nor closed `sock` (without waiting)."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    except ConnectionResetError:
        pass
    finally:
        sock.settimeout(DEADLINE + HANG_GUARD)
    return False


def dial_and_see(
    gateway: GatewayProcess, source: str, port: int | None = None
) -> tuple[socket.socket, bool]:
    """A socket from `source` once the listener has taken it, and whether it is still open."""
    sock = dial(gateway, source, port)
    all_taken(gateway, port)
    return sock, still_open(sock)


def closed_at_connect(gateway: GatewayProcess, source: str, port: int | None = None) -> bool:
    sock, is_open = dial_and_see(gateway, source, port)
    sock.close()
    return not is_open


async def test_a_source_holds_only_so_many_connections_without_a_whole_request_head(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Each socket that connects and sends nothing (or never finishes its head) holds a
    descriptor until the deadline. One source gets only so many at once; further ones are
    closed as they connect and counted, while its live calls, other sources and trusted
    proxies are not affected, and a head completed or a socket closed gives its place back.
    The operational listener is bounded alike."""
    settings = {
        "OPEN_TIMEOUT_SECONDS": "60",
        "MAX_UNFINISHED_REQUESTS_PER_SOURCE": str(UNFINISHED_LIMIT),
        "TRUSTED_PROXIES": f'["{PROXY}/32"]',
    }
    with gateway_process(redis_server, tmp_path, settings) as gateway:
        # Live calls from the source sent their heads long ago: they hold no place.
        calls = [
            await WireClient.connect(gateway.ws_url, source="127.0.0.7")
            for _ in range(UNFINISHED_LIMIT + 2)
        ]
        for call in calls:
            await call.open()
        baseline = open_fds(gateway)
        before = metric_value(gateway, REJECTED, cause="too_many_connections")
        held = [dial(gateway, "127.0.0.7") for _ in range(UNFINISHED_LIMIT)]
        proxied: list[socket.socket] = []
        try:
            send(held[0], UPGRADE)  # a head begun and never finished holds its place too
            for _ in range(50):
                assert closed_at_connect(gateway, "127.0.0.7")
            assert all(still_open(sock) for sock in held)
            assert metric_value(gateway, REJECTED, cause="too_many_connections") == before + 50
            assert open_fds(gateway) <= baseline + UNFINISHED_LIMIT + 5
            await good_call(gateway, source="127.0.0.8")  # another source is not affected

            proxied = [dial(gateway, PROXY) for _ in range(UNFINISHED_LIMIT + 4)]
            all_taken(gateway)
            assert all(still_open(sock) for sock in proxied)

            # A head completed gives its place back (this one is refused with 400).
            send(held[1], UPGRADE + b"Content-Length: 5\r\n\r\n")
            assert until_closed(held[1]).startswith(b"HTTP/1.1 400")
            held[1], is_open = dial_and_see(gateway, "127.0.0.7")
            assert is_open
            assert closed_at_connect(gateway, "127.0.0.7")

            # So does a socket the client closes, once the server has seen it go.
            held.pop(2).close()
            give_up = time.monotonic() + HANG_GUARD
            while closed_at_connect(gateway, "127.0.0.7"):
                assert time.monotonic() < give_up, "a closed socket kept its place"
                time.sleep(0.05)
            assert readyz(gateway) == 200

            # The operational listener's sockets take the process's descriptors too: bounded
            # alike (a count of its own), probes from other addresses still answered.
            held += [
                dial(gateway, "127.0.0.7", gateway.metrics_port) for _ in range(UNFINISHED_LIMIT)
            ]
            assert closed_at_connect(gateway, "127.0.0.7", gateway.metrics_port)
            assert all(still_open(sock) for sock in held[-UNFINISHED_LIMIT:])
            assert readyz(gateway) == 200
            for call in calls:
                await call.close()
        finally:
            for sock in held + proxied:
                sock.close()
            for call in calls:
                await call.aclose()


# --- data before the handshake response (RFC 6455 section 4.1: a client must wait for it) ----

EARLY_DATA = {"kind": "data_before_handshake_response"}
FAILURE_DELAY = 1.0  # how long admission holds a failed login before its 401
UNMASKED_FRAME = b"\x82\x02ab"  # refused by every WebSocket parser: a client's frames are masked


def failed_login_upgrade() -> bytes:
    """A well-formed upgrade with an unknown API key: admission holds it for the failure
    delay before answering."""
    ids = "".join(
        f"Audiohook-{name}-Id: {uuid.uuid4()}\r\n"
        for name in ("Session", "Organization", "Correlation")
    )
    return UPGRADE + ids.encode() + b"X-API-KEY: not-a-known-key\r\n\r\n"


def masked_text(text: str) -> bytes:
    """A client's text frame (masked with a zero key), up to 125 bytes."""
    payload = text.encode()
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def new_log_text(gateway: GatewayProcess, since: int) -> str:
    return gateway.log_path.read_bytes()[since:].decode()


@pytest.fixture(scope="module")
def gateway_answering_401(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Failed logins answered HTTP 401 after the failure delay: the head waits in admission."""
    settings = {
        "AUTH_FAILURE_RESPONSE": "http_401",
        "AUTH_MIN_FAILURE_DELAY_SECONDS": str(FAILURE_DELAY),
        "OPEN_TIMEOUT_SECONDS": str(FAILURE_DELAY + HANG_GUARD),
    }
    with gateway_process(redis_server, tmp_path_factory.mktemp("guard401"), settings) as process:
        yield process


async def test_a_message_sent_with_the_request_head_fails_the_connection_at_once(
    gateway: GatewayProcess,
) -> None:
    """Bytes that share a read with the head are early data too: the connection is failed
    with 1002 when it is accepted, not left waiting for a message it would never see."""
    before = metric_value(gateway, PROTOCOL_ERRORS, **EARLY_DATA)
    with dial(gateway) as sock:
        send(sock, failed_login_upgrade() + masked_text('{"type": "open"}'))
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 101"), answer[:200]
    assert (1002).to_bytes(2) + b"data sent before the handshake response" in answer
    assert metric_value(gateway, PROTOCOL_ERRORS, **EARLY_DATA) == before + 1


async def test_a_bad_frame_while_the_upgrade_waits_for_its_answer_is_never_parsed(
    gateway_answering_401: GatewayProcess,
) -> None:
    gateway = gateway_answering_401
    log_before = gateway.log_path.stat().st_size
    with dial(gateway) as sock:
        send(sock, failed_login_upgrade())
        time.sleep(0.1)  # read, and waiting out the failure delay in admission
        send(sock, UNMASKED_FRAME)
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    log_text = new_log_text(gateway, log_before)
    assert "Traceback" not in log_text
    assert "Fatal error" not in log_text


async def test_a_client_streaming_before_the_answer_is_dropped_past_a_bound(
    gateway_answering_401: GatewayProcess,
) -> None:
    gateway = gateway_answering_401
    before = metric_value(gateway, PROTOCOL_ERRORS, **EARLY_DATA)
    log_before = gateway.log_path.stat().st_size
    with dial(gateway) as sock:
        send(sock, failed_login_upgrade())
        time.sleep(0.1)
        send(sock, bytes(MAX_BYTES_BEFORE_RESPONSE + 65536))
        assert not until_closed(sock).startswith(b"HTTP/1.1 401")  # dropped before its answer
    assert metric_value(gateway, PROTOCOL_ERRORS, **EARLY_DATA) == before + 1
    time.sleep(FAILURE_DELAY)  # admission finishes its failure delay, to find the connection gone
    log_text = new_log_text(gateway, log_before)
    assert "connection dropped: data before the handshake response" in log_text
    assert "Traceback" not in log_text


async def test_a_connection_dropped_for_early_data_before_its_accept_writes_no_error(
    gateway: GatewayProcess,
) -> None:
    """Dropped while admission decides (a failed login, answered `disconnect`), the connection
    is gone by its accept: the client's doing, counted as early data, not an error of the
    application's (a line per connection, which a client could multiply)."""
    before = metric_value(gateway, PROTOCOL_ERRORS, **EARLY_DATA)
    log_before = gateway.log_path.stat().st_size
    for _ in range(3):
        with dial(gateway) as sock:
            send(sock, failed_login_upgrade() + bytes(MAX_BYTES_BEFORE_RESPONSE + 65536))
            until_closed(sock)
    await wait_for_metric(gateway, PROTOCOL_ERRORS, before + 3, **EARLY_DATA)
    time.sleep(1.0)  # admission's failure delay (0.1 s) is over: each accept finds it gone
    records = [json.loads(line) for line in new_log_text(gateway, log_before).splitlines()]
    assert [r["message"] for r in records if r["level"] in {"ERROR", "CRITICAL"}] == []
