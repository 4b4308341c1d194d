"""A Genesys-like AudioHook client session on the `websockets` asyncio client.

`ClientSession(config).run()` dials, opens, streams, pings, answers the server and closes
the way the Genesys client does (docs/protocol.md §7), judges every server message with
`ServerMessageChecker`, and returns a `SessionResult` holding everything that happened:
the server messages with receive times, every frame sent (offset, bytes, send time), the
client messages, timings and findings. One receive loop per session plus a streaming and a
ping task; real-time pacing runs off a shared `Pacer`. Nothing is logged per frame.
`SessionConfig` and `SessionResult` are in app/client/session_data.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from app.client.audio import FRAME_SAMPLES
from app.client.checks import Finding, ServerMessageChecker
from app.client.counters import ClientCounters
from app.client.pacing import Pacer
from app.client.session_data import (
    LAYOUTS,
    PROBE_PARTICIPANT,
    Layout,
    Participant,
    Received,
    SentFrame,
    SentMessage,
    SessionConfig,
    SessionResult,
    media_offers,
)
from app.client.upgrade import Endpoint, upgrade_headers
from app.protocol.media import MediaFormat
from app.protocol.messages import (
    format_duration,
    format_seconds,
    parse_duration,
)

__all__ = [
    "LAYOUTS",
    "PROBE_PARTICIPANT",
    "ClientSession",
    "Layout",
    "Participant",
    "Received",
    "SentFrame",
    "SentMessage",
    "SessionConfig",
    "SessionResult",
    "media_offers",
    "run_session",
]

_MAX_RECEIVE_BYTES: Final = 1 << 20  # larger than the protocol's limit, so we can diagnose it
_TIMING_FORMAT: Final = MediaFormat("PCMU", ("external",))  # paces a stream with no media


def _rtt_duration(seconds: float) -> str:
    return format_seconds(Decimal(round(seconds * 1000)) / 1000)


_DISCONNECT_HINTS: Final = {
    "unauthorized": "the server rejected the credentials: check the API key and client secret "
    "match the server's integration, the organization id it expects, and this machine's clock "
    "(a signature is only valid for a few seconds)",
    "error": "the server reported an error in this session; its info says which",
    "completed": "the server ended the session early; Genesys treats this as a normal end",
}


class ClientSession:
    def __init__(self, config: SessionConfig, *, pacer: Pacer | None = None) -> None:
        self.config = config
        self.endpoint = Endpoint.parse(config.uri)
        self.pacer = pacer or Pacer()
        self.result = SessionResult(config.session_id, config.uri)
        # seq, the server's seq (the checker keeps it) and the position on the client's
        # timeline, in samples per channel
        self.counters = ClientCounters(config.session_id)
        self.checker = ServerMessageChecker(
            config.session_id,
            config.offers,
            supported_languages_requested=config.supported_languages is True,
            counters=self.counters,
        )
        self._ws: ClientConnection | None = None
        self._paused = False
        self._pause_start = 0
        self._pause_discarded = 0
        self._deadline: float | None = None
        self._timeout: asyncio.Timeout | None = None
        self._open_sent_at = 0.0
        self._close_sent_at = 0.0
        self._ping_sent_at = 0.0
        self._pong = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = False  # leave the receive loop

    # --- entry point ---------------------------------------------------------------------------

    async def run(self) -> SessionResult:
        """Run the call to its end; failures are recorded in the result, never raised."""
        try:
            if await self._connect():
                await self._session()
        except Exception as exc:  # one broken call must not take a whole simulation down
            self._finding(
                Finding(
                    "client-failure",
                    "client",
                    f"the client failed: {type(exc).__name__}: {exc}",
                    "this is a problem of the client, not of the server",
                )
            )
        finally:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._ws is not None:
                with contextlib.suppress(Exception):
                    await self._ws.close()
        return self.result

    def _finding(self, finding: Finding) -> None:
        self.result.findings.append(finding)

    async def _connect(self) -> bool:
        config, result = self.config, self.result
        headers = upgrade_headers(
            self.endpoint,
            api_key=config.api_key,
            client_secret=config.client_secret,
            organization_id=config.organization_id,
            session_id=config.session_id,
            correlation_id=config.correlation_id,
        )
        context: ssl.SSLContext | None = None
        if self.endpoint.secure:
            context = config.ssl_context or ssl.create_default_context()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(config.connect_timeout):
                self._ws = await connect(
                    config.uri,
                    additional_headers=headers,
                    ssl=context,
                    compression=None,
                    proxy=None,
                    open_timeout=None,
                    ping_interval=None,
                    close_timeout=min(2.0, config.close_timeout),
                    max_size=_MAX_RECEIVE_BYTES,
                    user_agent_header="audiohook-gateway-client",
                )
        except InvalidStatus as exc:
            response = exc.response
            result.http_status = response.status_code
            result.http_body = (
                response.body.decode("utf-8", "replace")[:500] if response.body else ""
            )
            self._finding(_http_finding(response.status_code, result.http_body))
            return False
        except TimeoutError:
            self._finding(
                Finding(
                    "connect-timeout",
                    "connection",
                    f"no WebSocket connection within {config.connect_timeout:g} s",
                    "check the host, port and any firewall between here and the server",
                    error_code=408,
                )
            )
            return False
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            result.connect_error = f"{type(exc).__name__}: {exc}"
            self._finding(_connect_finding(exc))
            return False
        result.connected = True
        result.connect_seconds = time.perf_counter() - started
        return True

    # --- sending -------------------------------------------------------------------------------

    async def _send(self, msg_type: str, parameters: Mapping[str, Any]) -> bool:
        """Send one client message; seq is assigned and written without yielding in between."""
        ws = self._ws
        if ws is None or self.checker.phase == "closed":
            return False  # nothing is ever sent after closed
        counters = self.counters
        text = counters.message(msg_type, parameters)
        self.checker.sent(msg_type, counters.seq)
        self.result.sent.append(SentMessage(time.time(), msg_type, counters.seq, text))
        try:
            await ws.send(text)
        except ConnectionClosed:
            return False
        return True

    async def _send_frame(self, frame: bytes, samples: int) -> bool:
        ws = self._ws
        if ws is None:
            return False
        result = self.result
        if self.config.record_frames:
            result.frames.append(SentFrame(self.counters.position, frame, time.time()))
        result.frames_sent += 1
        result.bytes_sent += len(frame)
        result.samples_sent += samples
        self.counters.position += samples
        try:
            await ws.send(frame)
        except ConnectionClosed:
            return False
        return True

    def _set_deadline(self, delay: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = None if delay is None else loop.time() + delay
        if self._timeout is not None and not self._timeout.expired():
            with contextlib.suppress(RuntimeError):  # expiring: the loop re-reads the deadline
                self._timeout.reschedule(self._deadline)

    async def close(self, reason: str) -> None:
        """Send `close` (once) and wait up to close_timeout for `closed`."""
        if self.checker.phase not in ("opening", "open") or self._stop:
            return
        self.result.close_reason = reason
        self._close_sent_at = asyncio.get_running_loop().time()
        self._set_deadline(self.config.close_timeout)
        if not await self._send("close", {"reason": reason}):
            self._stop = True

    async def _fail(self, finding: Finding) -> None:
        """Give the session up the way Genesys does: `error`, then `close` reason `error`."""
        if self.config.report_errors and finding.error_code is not None:
            await self._send(
                "error", {"code": finding.error_code, "message": finding.message[:500]}
            )
        await self.close("error")

    # --- receiving -----------------------------------------------------------------------------

    async def _session(self) -> None:
        self._open_sent_at = asyncio.get_running_loop().time()
        self._set_deadline(self.config.open_timeout)
        if not await self._send("open", self.config.open_parameters()):
            return
        await self._receive_loop()
        if not any(finding.rule == "pong-timeout" for finding in self.result.findings):
            self.result.findings.extend(self.checker.finish())

    async def _receive_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        loop = asyncio.get_running_loop()
        while not self._stop:
            timeout = asyncio.timeout_at(self._deadline)
            self._timeout = timeout
            try:
                async with timeout:
                    frame = await ws.recv()
            except TimeoutError:
                if self._deadline is not None and loop.time() >= self._deadline:
                    await self._on_deadline()
                continue
            except ConnectionClosed as exc:
                self._on_socket_closed(exc)
                return
            finally:
                self._timeout = None
            await self._on_frame(frame)

    async def _on_deadline(self) -> None:
        phase, config = self.checker.phase, self.config
        if phase == "opening":
            self._finding(
                Finding(
                    "opened-timeout",
                    "opened",
                    f"no 'opened' within {config.open_timeout:g} s of 'open'",
                    "answer open quickly: Genesys gives up after 5 s (do not wait on downstream "
                    "systems before sending opened)",
                    error_code=408,
                    fatal=True,
                )
            )
            await self._fail(self.result.findings[-1])
        elif phase == "closing":
            self._finding(
                Finding(
                    "closed-timeout",
                    "closed",
                    f"no 'closed' within {config.close_timeout:g} s of 'close'",
                    "answer every close with closed (also after a disconnect or an error); "
                    "Genesys reports 'Close transaction timed out' otherwise",
                    error_code=408,
                )
            )
            self._stop = True
        elif phase == "closed":
            self._stop = True  # done lingering after closed

    def _on_socket_closed(self, exc: ConnectionClosed) -> None:
        rcvd = exc.rcvd
        self.result.socket_close = (
            f"{rcvd.code} {rcvd.reason}".strip() if rcvd is not None else "no close frame"
        )
        phase = self.checker.phase
        if phase == "closed":
            return
        if phase == "closing":
            hint = "send closed before closing the socket; the client closes it after closed"
        else:
            hint = "to end a session, send 'disconnect' and wait for the client's close"
        self._finding(
            Finding(
                "socket-closed",
                "connection",
                f"the server closed the WebSocket ({self.result.socket_close}) while the "
                f"session was {phase}, without 'closed'",
                hint,
            )
        )

    async def _on_frame(self, frame: str | bytes) -> None:
        now = time.time()
        result = self.result
        if isinstance(frame, bytes):
            result.received.append(Received(now, None, frame, None))
            findings = self.checker.check_binary(frame)
            result.findings.extend(findings)
            await self._fail(findings[0])
            return
        checked = self.checker.check_text(frame)
        result.received.append(Received(now, frame, None, checked.message))
        result.findings.extend(checked.findings)
        msg_type = checked.type
        if checked.accepted:
            await self._dispatch(msg_type or "", checked.parameters)
            return
        fatal = next((finding for finding in checked.findings if finding.fatal), None)
        if msg_type == "closed":
            self._stop = True  # the server considers the session over, rightly or not
        elif fatal is not None:
            await self._fail(fatal)

    async def _dispatch(self, msg_type: str, params: dict[str, Any]) -> None:
        result, loop = self.result, asyncio.get_running_loop()
        if msg_type == "opened":
            await self._on_opened(params)
        elif msg_type == "pong":
            rtt = loop.time() - self._ping_sent_at
            result.pongs += 1
            result.rtts.append(rtt)
            self._pong.set()
        elif msg_type == "pause":
            result.pauses += 1
            if not self._paused:
                self._paused = True
                self._pause_start, self._pause_discarded = self.counters.position, 0
            await self._send("paused", {})
        elif msg_type == "resume":
            result.resumes += 1
            if self._paused:
                self._paused = False
                start, discarded = self._pause_start, self._pause_discarded
            else:
                start, discarded = self.counters.position, 0
            await self._send(
                "resumed",
                {"start": format_duration(start), "discarded": format_duration(discarded)},
            )
        elif msg_type == "disconnect":
            result.disconnect = dict(params)
            reason = params.get("reason")
            info = params.get("info")
            self._finding(
                Finding(
                    "disconnect",
                    "disconnect.parameters.reason",
                    f"the server disconnected: {reason}" + (f" ({info})" if info else ""),
                    _DISCONNECT_HINTS.get(str(reason), ""),
                    actual=reason,
                    severity="warning" if reason == "completed" else "error",
                )
            )
            await self.close("disconnect")
        elif msg_type == "reconnect":
            info = params.get("info")
            result.reconnects.append(info if isinstance(info, str) else None)
        elif msg_type == "event":
            result.events.append((time.time(), list(params.get("entities", []))))
        elif msg_type == "updated":
            result.updates += 1
        elif msg_type == "closed":
            result.closed = True
            result.close_seconds = loop.time() - self._close_sent_at
            for task in self._tasks:
                task.cancel()
            if self.config.linger_after_closed > 0:
                self._set_deadline(self.config.linger_after_closed)
            else:
                self._stop = True

    async def _on_opened(self, params: dict[str, Any]) -> None:
        result, loop = self.result, asyncio.get_running_loop()
        result.opened = True
        result.open_seconds = loop.time() - self._open_sent_at
        result.selected_media = self.checker.selected_media
        result.start_paused = params.get("startPaused") is True
        discard_to = params.get("discardTo")
        result.discard_to = discard_to if isinstance(discard_to, str) else None
        languages = params.get("supportedLanguages")
        result.supported_languages = languages if isinstance(languages, list) else None
        self._set_deadline(None)
        if result.start_paused:
            self._paused = True
            self._pause_start, self._pause_discarded = self.counters.position, 0
            if not await self._send("paused", {}):
                return
        self._tasks.append(loop.create_task(self._stream()))
        if self.config.ping_first_delay is not None:
            self._tasks.append(loop.create_task(self._ping_loop()))

    # --- audio ---------------------------------------------------------------------------------

    def _frames(self) -> tuple[Sequence[bytes], MediaFormat | None]:
        source = self.config.source
        selected = self.checker.selected_media
        media = MediaFormat.from_offer(selected) if selected is not None else None
        if source is None:
            return [], media
        # With no media selected the stream still runs its course, without sending audio.
        return source.frames(media or _TIMING_FORMAT), media

    async def _stream(self) -> None:
        frames, media = self._frames()
        index = 0
        if self.result.discard_to is not None and frames:
            index = await self._discard_to(self.result.discard_to, len(frames), media)
        if not frames and media is not None and self.config.empty_frame and not self._paused:
            await self._send_frame(b"", 0)
        realtime = self.config.realtime
        with self.pacer.use():
            start_tick = self.pacer.tick
            while index < len(frames) and self.checker.phase == "open":
                # Frame k leaves at the (k+1)-th tick after the start: never ahead of real time
                # (so frames skipped for discardTo still take their time to "happen").
                owed = 1 + max(0, self.pacer.tick - start_tick - 1) if realtime else len(frames)
                while index < min(owed, len(frames)) and self.checker.phase == "open":
                    frame = frames[index]
                    index += 1
                    samples = len(frame) // (media or _TIMING_FORMAT).bytes_per_sample_group
                    if media is None:
                        self.counters.position += samples
                    elif self._paused:
                        self.counters.position += samples
                        self._pause_discarded += samples
                        self.result.samples_discarded += samples
                        if not realtime:
                            break  # a paused call keeps running in real time
                    elif not await self._send_frame(frame, samples):
                        return
                    elif not realtime:
                        await asyncio.sleep(0)  # let other sessions and the receiver run
                if index < len(frames) and (realtime or self._paused):
                    await self.pacer.wait()
        await self.close("end")

    async def _discard_to(self, discard_to: str, count: int, media: MediaFormat | None) -> int:
        """Skip to `discardTo`, rounded down to whole frames, and report it with `discarded`."""
        skip = min(parse_duration(discard_to) // FRAME_SAMPLES, count)
        if skip == 0 or media is None:
            return 0
        start = self.counters.position
        self.counters.position += skip * FRAME_SAMPLES
        self.result.samples_discarded += skip * FRAME_SAMPLES
        await self._send(
            "discarded",
            {"start": format_duration(start), "discarded": format_duration(skip * FRAME_SAMPLES)},
        )
        return skip

    # --- ping ----------------------------------------------------------------------------------

    async def _ping(self) -> bool:
        if self.checker.phase != "open":
            return False
        params: dict[str, Any] = {}
        if self.result.rtts:
            params["rtt"] = _rtt_duration(self.result.rtts[-1])
        self._pong.clear()
        self._ping_sent_at = asyncio.get_running_loop().time()
        self.result.pings += 1
        return await self._send("ping", params)

    def _pong_timeout(self) -> Finding:
        return Finding(
            "pong-timeout",
            "pong",
            f"no 'pong' within {self.config.ping_interval:g} s of the ping with seq "
            f"{self.checker.pending_ping_seq}",
            "answer every ping with a pong right away; Genesys ends the session with "
            "'Timeout waiting for pong'",
            error_code=408,
            fatal=True,
        )

    async def _ping_loop(self) -> None:
        """Ping 1 s after opened, again as soon as the first pong arrives, then every 5 s."""
        config = self.config
        assert config.ping_first_delay is not None
        await asyncio.sleep(config.ping_first_delay)
        if not await self._ping():
            return
        try:
            async with asyncio.timeout(config.ping_interval):
                await self._pong.wait()
        except TimeoutError:
            if self.checker.phase == "open":
                self._finding(self._pong_timeout())
                await self._fail(self.result.findings[-1])
            return
        if not await self._ping():
            return
        while True:
            await asyncio.sleep(config.ping_interval)
            if self.checker.phase != "open":
                return
            if self.checker.pending_ping_seq is not None:
                self._finding(self._pong_timeout())
                await self._fail(self.result.findings[-1])
                return
            if not await self._ping():
                return


async def run_session(config: SessionConfig, *, pacer: Pacer | None = None) -> SessionResult:
    return await ClientSession(config, pacer=pacer).run()


# --- connection failures ---------------------------------------------------------------------

_HTTP_HINTS: Final = {
    400: "the server rejected the upgrade request as malformed; check the path and that it "
    "speaks WebSocket",
    401: "the server rejected the signature or API key: check the API key and client secret "
    "(base64) match the server's, and this machine's clock",
    403: "the server refused this client: its source-IP allowlist or API-key policy does not "
    "admit it",
    404: "no WebSocket endpoint at this path; check the URI path (e.g. /api/v1/audiohook/ws)",
    426: "the endpoint wants a WebSocket upgrade it did not get; check proxies in between",
    429: "the server is rate limiting new sessions; retry later",
    502: "a proxy in front of the server could not reach it",
    503: "the server is not ready (starting, draining or overloaded); retry later",
}


def _http_finding(status: int, body: str) -> Finding:
    hint = _HTTP_HINTS.get(status, "the server did not accept the WebSocket upgrade")
    shown = f": {body.strip()[:120]}" if body.strip() else ""
    return Finding(
        "http-status",
        "upgrade",
        f"the server answered the upgrade with HTTP {status}{shown}",
        hint,
        expected=101,
        actual=status,
    )


def _connect_finding(exc: BaseException) -> Finding:
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = (
            "the certificate does not verify against public CAs; Genesys accepts only "
            "certificates from a public CA (no self-signed or private CA)"
        )
    elif isinstance(exc, ssl.SSLError):
        hint = "the TLS handshake failed; check the server's TLS configuration"
    elif isinstance(exc, ConnectionRefusedError):
        hint = "nothing listens at this host and port"
    elif isinstance(exc, OSError):
        hint = "check the host name, port and network path"
    else:
        hint = "the server's answer was not a valid WebSocket handshake"
    return Finding("connect", "connection", f"cannot connect: {exc}", hint)
