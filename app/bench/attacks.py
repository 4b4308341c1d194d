"""Attack generators for `bench --hostile`: each one class of hostile traffic, on loopback only,
bounded in time (a deadline), in rate and in sockets, counting what it did and what it got.

Attacks come from ATTACK_SOURCE (another loopback address than the good calls' 127.0.0.1), so
per-source limits see them as one distinct client, as they would see a real attacker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, TypedDict

from app.bench.wsload import _OP_BINARY, _OP_TEXT, client_frame
from app.client.session import Participant, media_offers
from app.client.upgrade import Endpoint, upgrade_headers
from app.protocol.messages import encode_client_message

ATTACK_SOURCE: Final = "127.0.0.2"
ANSWER_TIMEOUT: Final = 5.0  # seconds an attacker waits for the gateway's HTTP answer
MAX_OUTSTANDING: Final = 1000  # attempts in progress at once, for the paced attacks


@dataclass(frozen=True, slots=True)
class AttackTarget:
    endpoint: Endpoint
    api_key: str
    client_secret: str | None


@dataclass(frozen=True, slots=True)
class AttackOptions:
    rate: float | None = None  # attempts per second (paced attacks); None: the attack's default
    connections: int = 200  # sockets held at once (malformed-upgrade, idle-connections)


# An attack runs until `deadline` (time.monotonic()) and counts what it did in the Counter.
Attack = Callable[[AttackTarget, float, AttackOptions, Counter[str]], Coroutine[Any, Any, None]]


def _request(endpoint: Endpoint, headers: dict[str, str], target: str | None = None) -> bytes:
    lines = [
        f"GET {target or endpoint.request_target} HTTP/1.1",
        f"Host: {endpoint.authority}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Ids(TypedDict):
    organization_id: str
    session_id: str
    correlation_id: str


def _ids(correlation_id: str | None = None) -> Ids:
    return Ids(
        organization_id=str(uuid.uuid4()),
        session_id=str(uuid.uuid4()),
        correlation_id=correlation_id or str(uuid.uuid4()),
    )


async def _connect(
    endpoint: Endpoint,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(endpoint.host, endpoint.port, local_addr=(ATTACK_SOURCE, 0)),
        ANSWER_TIMEOUT,
    )


async def _dial(
    endpoint: Endpoint, counts: Counter[str], pause: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection, or None (counted, after a `pause` in seconds) if it could not be made."""
    try:
        return await _connect(endpoint)
    except (OSError, TimeoutError):
        counts["connect_failed"] += 1
        await asyncio.sleep(pause)
        return None


async def _status(reader: asyncio.StreamReader, wait: float = ANSWER_TIMEOUT) -> str:
    """The HTTP status of the answer ("101", "503", ...), or why there was none."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
    except TimeoutError:
        return "no_answer"
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return "closed"
    parts = head.split(b" ", 2)
    return parts[1].decode(errors="replace") if len(parts) > 1 else "garbled"


async def _until_closed(reader: asyncio.StreamReader, deadline: float) -> None:
    """Read and discard until the server closes the socket or the deadline passes."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            while await reader.read(65536):
                pass


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


async def _one_upgrade(target: AttackTarget, request: bytes, counts: Counter[str]) -> None:
    """One upgrade attempt: send, count the answer, wait for the server to finish with us."""
    try:
        reader, writer = await _connect(target.endpoint)
    except (OSError, TimeoutError):
        counts["connect_failed"] += 1
        return
    try:
        writer.write(request)
        status = await _status(reader)
        counts[f"status_{status}"] += 1
        if status == "101":  # accepted, to be told `unauthorized`: wait for that, bounded
            await _until_closed(reader, time.monotonic() + 2.0)
    finally:
        _close(writer)


async def _paced(
    rate: float,
    deadline: float,
    counts: Counter[str],
    attempt: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    """`attempt()` `rate` times a second until the deadline, at most MAX_OUTSTANDING at once."""
    outstanding: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    sent = 0
    while time.monotonic() < deadline:
        due = started + sent / rate
        if due > time.monotonic():
            await asyncio.sleep(due - time.monotonic())
        if len(outstanding) >= MAX_OUTSTANDING:
            counts["skipped_at_bound"] += 1
            await asyncio.wait(outstanding, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(attempt())
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
        sent += 1
        counts["attempts"] += 1
    if outstanding:
        await asyncio.wait(outstanding, timeout=ANSWER_TIMEOUT + 3)
        for task in outstanding:
            task.cancel()


# --- the attack classes ---------------------------------------------------------------------


async def log_flood(
    target: AttackTarget, deadline: float, options: AttackOptions, counts: Counter[str]
) -> None:
    """A wrong API key with a 4,000-character correlation id, then 1-byte text frames as fast
    as the socket takes them; again on a new connection whenever the server closes it."""
    frame_batch = client_frame(_OP_TEXT, b"x") * 256

    def upgrade() -> tuple[Ids, dict[str, str]]:
        ids = _ids(correlation_id="c" * 4000)
        api_key = "wrong-" + uuid.uuid4().hex
        return ids, upgrade_headers(target.endpoint, api_key=api_key, client_secret=None, **ids)

    async for _ids_used, reader, writer in _upgraded(target, deadline, counts, upgrade):
        await _flood(reader, writer, frame_batch, 256, deadline, counts)


async def _upgraded(
    target: AttackTarget,
    deadline: float,
    counts: Counter[str],
    upgrade: Callable[[], tuple[Ids, dict[str, str]]],
) -> AsyncIterator[tuple[Ids, asyncio.StreamReader, asyncio.StreamWriter]]:
    """Connections upgraded with `upgrade()`'s headers, one after another until the deadline;
    each is closed once the caller is done with it (a reset is counted, not raised)."""
    while time.monotonic() < deadline:
        ids, headers = upgrade()
        if (dialled := await _dial(target.endpoint, counts, 0.05)) is None:
            continue
        reader, writer = dialled
        counts["connections"] += 1
        try:
            writer.write(_request(target.endpoint, headers))
            status = await _status(reader)
            counts[f"status_{status}"] += 1
            if status == "101":
                yield ids, reader, writer
            else:
                await asyncio.sleep(0.1)
        except ConnectionError:
            counts["reset"] += 1
        finally:
            _close(writer)


async def _flood(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    batch: bytes,
    frames_per_batch: int,
    deadline: float,
    counts: Counter[str],
) -> None:
    """Write `batch` as fast as the socket takes it until the server ends the connection."""
    reading = asyncio.create_task(_until_closed(reader, deadline))
    try:
        while time.monotonic() < deadline and not reading.done() and not writer.is_closing():
            writer.write(batch)
            counts["frames"] += frames_per_batch
            await writer.drain()
    except ConnectionError:
        counts["reset"] += 1
    finally:
        reading.cancel()
    if time.monotonic() < deadline:
        counts["ended_by_server"] += 1


def _malformed_requests(target: AttackTarget) -> list[bytes]:
    endpoint = target.endpoint
    headers = upgrade_headers(
        endpoint, api_key=target.api_key, client_secret=target.client_secret, **_ids()
    )
    chunked = _request(endpoint, headers | {"Transfer-Encoding": "chunked"})
    return [
        chunked + b"5\r\nhello\r\n0\r\n\r\n",  # a chunked body on an upgrade
        _request(endpoint, headers | {"Content-Length": "100000"}) + b"a" * 1000,  # a body
        _request(endpoint, headers | {"X-Padding": "a" * 9000}),  # a header line over 8 KB
        _request(endpoint, headers, endpoint.request_target + "?q=" + "a" * 16000),  # long URL
        _request(endpoint, headers)[:-4],  # a request head never finished
    ]


async def malformed_upgrade(
    target: AttackTarget, deadline: float, options: AttackOptions, counts: Counter[str]
) -> None:
    """`connections` sockets sending malformed upgrade requests and holding the socket open
    until the server closes it (then a new one) or the attack ends."""

    async def hold(worker: int) -> None:
        attempt = 0
        while time.monotonic() < deadline:
            requests = _malformed_requests(target)
            request = requests[(worker + attempt) % len(requests)]
            attempt += 1
            if (dialled := await _dial(target.endpoint, counts, 0.1)) is None:
                continue
            reader, writer = dialled
            counts["sockets"] += 1
            try:
                writer.write(request)
                status = await _status(reader, max(0.0, deadline - time.monotonic()))
                counts[f"status_{status}"] += 1
                if status not in ("closed", "no_answer"):
                    await _until_closed(reader, deadline)
                if time.monotonic() < deadline:
                    counts["closed_by_server"] += 1
                else:
                    counts["held_to_end"] += 1
            except ConnectionError:
                counts["reset"] += 1
            finally:
                _close(writer)

    await asyncio.gather(*(hold(worker) for worker in range(options.connections)))


async def idle_connections(
    target: AttackTarget, deadline: float, options: AttackOptions, counts: Counter[str]
) -> None:
    """`connections` sockets that connect and send nothing, each dialled again once the
    server closes it (about a second later if that was at once): how many the gateway holds
    (`held_peak`, as this side sees it) and whether it closes them at once or only at its
    request deadline."""
    held = 0

    async def hold() -> None:
        nonlocal held
        while time.monotonic() < deadline:
            if (dialled := await _dial(target.endpoint, counts, 0.1)) is None:
                continue
            reader, writer = dialled
            counts["sockets"] += 1
            connected = time.monotonic()
            held += 1
            counts["held_peak"] = max(counts["held_peak"], held)
            try:
                await _until_closed(reader, deadline)
            finally:
                held -= 1
                _close(writer)
            closed = time.monotonic()
            if closed >= deadline:
                counts["held_to_end"] += 1
            elif closed - connected < 1.0:
                counts["closed_at_once"] += 1
                # Spread out: sockets refused together would come back together, a burst of
                # connects that overflows the listen backlog, which is the kernel's business.
                await asyncio.sleep(0.5 + random.random())  # noqa: S311 - pacing, not a secret
            else:
                counts["closed_later"] += 1

    await asyncio.gather(*(hold() for _ in range(options.connections)))


async def failed_logins(
    target: AttackTarget, deadline: float, options: AttackOptions, counts: Counter[str]
) -> None:
    """Upgrades signed with a wrong secret (a known API key), ~250 a second."""

    async def attempt() -> None:
        wrong = base64.b64encode(os.urandom(32)).decode()
        headers = upgrade_headers(
            target.endpoint, api_key=target.api_key, client_secret=wrong, **_ids()
        )
        await _one_upgrade(target, _request(target.endpoint, headers), counts)

    await _paced(options.rate or 250.0, deadline, counts, attempt)


def junk_signature_headers(target: AttackTarget, size: int = 7800) -> dict[str, str]:
    """Unsigned AudioHook headers plus a `Signature-Input` of `size` characters of junk
    members and a well-formed-looking `Signature`."""
    members: list[str] = []
    length = 0
    while length < size:
        member = f'j{len(members)}=("@request-target" "x-junk-{len(members)}");created=1'
        members.append(member)
        length += len(member) + 2
    headers = upgrade_headers(target.endpoint, api_key=target.api_key, client_secret=None, **_ids())
    return headers | {
        "Signature-Input": ", ".join(members)[:size],
        "Signature": f"sig1=:{base64.b64encode(os.urandom(32)).decode()}:",
    }


async def junk_signature(
    target: AttackTarget, deadline: float, options: AttackOptions, counts: Counter[str]
) -> None:
    """Upgrades with a 7.8 KB `Signature-Input` of junk members, ~290 a second."""

    async def attempt() -> None:
        request = _request(target.endpoint, junk_signature_headers(target))
        await _one_upgrade(target, request, counts)

    await _paced(options.rate or 290.0, deadline, counts, attempt)


def _open_message(session_id: str) -> bytes:
    parameters = {
        "organizationId": str(uuid.uuid4()),
        "conversationId": str(uuid.uuid4()),
        "participant": Participant().to_parameter(),
        "media": media_offers(),
        "language": "en-US",
    }
    text = encode_client_message("open", session_id, 1, 0, 0, parameters)
    return client_frame(_OP_TEXT, text.encode())


async def frame_flood(
    target: AttackTarget, deadline: float, options: AttackOptions, counts: Counter[str]
) -> None:
    """An authenticated session that sends 200 ms stereo PCMU frames as fast as the socket
    takes them; again on a new session whenever the server ends it."""
    frame_batch = client_frame(_OP_BINARY, b"\xff" * 3200) * 50

    def upgrade() -> tuple[Ids, dict[str, str]]:
        ids = _ids()
        secret = target.client_secret
        return ids, upgrade_headers(
            target.endpoint, api_key=target.api_key, client_secret=secret, **ids
        )

    async for ids, reader, writer in _upgraded(target, deadline, counts, upgrade):
        writer.write(_open_message(ids["session_id"]))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ANSWER_TIMEOUT):
                seen = b""
                while b"opened" not in seen:
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    seen = seen[-64:] + chunk
        await _flood(reader, writer, frame_batch, 50, deadline, counts)


ATTACKS: dict[str, Attack] = {
    "log-flood": log_flood,
    "malformed-upgrade": malformed_upgrade,
    "idle-connections": idle_connections,
    "failed-logins": failed_logins,
    "junk-signature": junk_signature,
    "frame-flood": frame_flood,
}
