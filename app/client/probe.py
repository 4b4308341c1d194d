"""`audiohook-gateway probe`: check any AudioHook server the way Genesys Cloud does.

Steps: the transport (TLS chain, handshake time and certificate expiry for wss://), the
Genesys connection probe (null conversation and participant, no audio but one empty frame,
`close` right away), then unless --probe-only a short real session (open, ~1 s of audio in
real time, pings, close). Every server message is judged by `ServerMessageChecker`; each
step gets a verdict naming the field at fault and how to fix it. `run_probe()` returns the
report as data, for tests and other tools; `run()` is the CLI entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TextIO, TypeAlias

from app.client.audio import tone_source
from app.client.checks import Finding, describe_media
from app.client.session import SessionConfig, SessionResult, run_session
from app.client.tls import TlsReport, check_tls, private_ca_context
from app.client.upgrade import Endpoint

Status: TypeAlias = Literal["pass", "warn", "fail", "skip"]
EXPIRY_WARNING_DAYS: Final = 14
_DEFAULT_LANGUAGE: Final = "en-US"


@dataclass(slots=True)
class ProbeOptions:
    uri: str
    api_key: str
    client_secret: str | None
    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    probe_only: bool = False
    language: str = _DEFAULT_LANGUAGE
    seconds: float = 1.2  # audio of the real session
    connect_timeout: float = 10.0
    open_timeout: float = 5.0
    close_timeout: float = 10.0
    ping_first_delay: float = 1.0
    ping_interval: float = 5.0  # also the time allowed for each pong
    linger: float = 0.5  # listen this long after `closed` for stray messages
    slow_open_warning: float = 2.0
    # CAs treated as "public" (None: the public CA bundle, never SSL_CERT_FILE); tests pass
    # their own.
    trust: ssl.SSLContext | None = None
    # A private CA (PEM) for a staging endpoint: the sessions verify against it, and the TLS
    # step says the chain is private (a warning) instead of failing.
    ca_file: str | None = None


@dataclass(slots=True)
class StepReport:
    name: str
    title: str
    status: Status
    summary: str
    findings: list[Finding] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "summary": self.summary,
            "findings": [finding.to_dict() for finding in self.findings],
            "details": self.details,
        }


@dataclass(slots=True)
class ProbeReport:
    uri: str
    steps: list[StepReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.status != "fail" for step in self.steps)

    @property
    def problems(self) -> list[Finding]:
        return [f for step in self.steps for f in step.findings if f.severity == "error"]

    def step(self, name: str) -> StepReport:
        return next(step for step in self.steps if step.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "ok": self.ok, "steps": [step.to_dict() for step in self.steps]}

    def render(self) -> str:
        lines = [f"AudioHook probe of {self.uri}"]
        for step in self.steps:
            lines.append(f"  [{step.status.upper()}] {step.title}: {step.summary}")
            for finding in step.findings:
                mark = "x" if finding.severity == "error" else "!"
                lines.append(f"         {mark} {finding.text}")
        problems = len(self.problems)
        verdict = "PASS" if self.ok else f"FAIL ({problems} problem{'s' if problems != 1 else ''})"
        lines.append(f"Result: {verdict}")
        return "\n".join(lines)


# --- steps -----------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _status(findings: list[Finding]) -> Status:
    if any(finding.severity == "error" for finding in findings):
        return "fail"
    return "warn" if findings else "pass"


def _transport_plain() -> StepReport:
    finding = Finding(
        "plain-ws",
        "uri",
        "plain ws:// endpoint",
        "Genesys Cloud connects only to wss:// with a certificate from a public CA",
        severity="warning",
    )
    return StepReport("transport", "transport", "warn", "ws:// (no TLS)", [finding])


def _transport_tls(report: TlsReport) -> StepReport:
    findings: list[Finding] = []
    if not report.connected:
        findings.append(
            Finding(
                "tls-connect",
                "tls",
                f"TLS connection to {report.host}:{report.port} failed: {report.error}",
                "check the host, the port and that the endpoint speaks TLS",
            )
        )
        return StepReport(
            "transport", "TLS", "fail", "no TLS connection", findings, report.to_dict()
        )
    parts = [f"handshake {_ms(report.handshake_seconds)}"]
    if report.protocol:
        parts.append(report.protocol)
    if report.subject:
        parts.append(f"certificate for {report.subject} issued by {report.issuer}")
    if report.verified:
        parts.append(f"chain verifies against public CAs ({report.trust})")
    elif report.private_ca_verified:
        parts.append("chain verifies against --ca-file only")
        findings.append(
            Finding(
                "tls-private-ca",
                "tls.certificate",
                f"the chain verifies against --ca-file but not against public CAs "
                f"({report.trust}): {report.verify_error}",
                "Genesys Cloud accepts only certificates chained to a public CA; a private CA "
                "is fine for a staging endpoint that only your own tools reach",
                severity="warning",
            )
        )
    else:
        hint = "Genesys accepts only certificates chained to a public CA"
        if report.self_signed:
            hint += "; this one is self-signed"
        if report.private_ca_verified is False:
            hint += "; it does not verify against --ca-file either"
        findings.append(
            Finding(
                "tls-verify",
                "tls.certificate",
                f"the certificate chain does not verify against public CAs ({report.trust}; "
                f"SSL_CERT_FILE is not used for this verdict): {report.verify_error}",
                hint,
            )
        )
    if report.not_after is not None and report.days_left is not None:
        parts.append(f"expires {report.not_after:%Y-%m-%d} ({report.days_left:.0f} days)")
        if report.days_left < 0:
            findings.append(
                Finding(
                    "tls-expired",
                    "tls.certificate.notAfter",
                    f"the certificate expired on {report.not_after:%Y-%m-%d}",
                    "renew the certificate",
                )
            )
        elif report.days_left < EXPIRY_WARNING_DAYS:
            findings.append(
                Finding(
                    "tls-expiring",
                    "tls.certificate.notAfter",
                    f"the certificate expires in {report.days_left:.0f} days",
                    "renew it before it expires; Genesys stops connecting then",
                    severity="warning",
                )
            )
    return StepReport(
        "transport", "TLS", _status(findings), ", ".join(parts), findings, report.to_dict()
    )


def _session_summary(result: SessionResult) -> str:
    if not result.connected:
        if result.http_status is not None:
            return f"upgrade refused with HTTP {result.http_status}"
        return "no connection"
    parts = []
    if result.opened:
        media = result.selected_media
        chosen = describe_media(media) if media else "no media"
        parts.append(f"opened in {_ms(result.open_seconds)} with {chosen}")
    else:
        parts.append("not opened")
    if result.frames_sent:
        plural = "s" if result.frames_sent != 1 else ""
        parts.append(f"{result.frames_sent} frame{plural} ({result.bytes_sent} bytes) sent")
    if result.pings:
        rtt = f", last rtt {_ms(result.rtts[-1])}" if result.rtts else ""
        parts.append(f"{result.pongs}/{result.pings} pongs{rtt}")
    if result.events:
        parts.append(f"{len(result.events)} events")
    if result.disconnect is not None:
        parts.append(f"disconnect {result.disconnect.get('reason')}")
    if result.closed:
        parts.append(f"closed in {_ms(result.close_seconds)}")
    elif result.close_reason:
        parts.append(f"close {result.close_reason} not answered")
    return ", ".join(parts)


def _session_findings(result: SessionResult, options: ProbeOptions) -> list[Finding]:
    findings = list(result.findings)
    errors = [finding for finding in findings if finding.severity == "error"]
    if result.connected and not result.opened and not errors:
        findings.append(
            Finding(
                "not-opened",
                "opened",
                "the session was never opened",
                "answer open with opened",
            )
        )
    seconds = result.open_seconds
    if result.opened and seconds is not None and seconds > options.slow_open_warning:
        findings.append(
            Finding(
                "opened-slow",
                "opened",
                f"'opened' took {seconds:.1f} s",
                "Genesys gives up after 5 s; answer open before any slow work",
                severity="warning",
            )
        )
    if result.opened and not result.closed and not errors:
        findings.append(
            Finding("not-closed", "closed", "the session did not end with 'closed'", "")
        )
    return findings


def _probe_config(options: ProbeOptions, context: ssl.SSLContext | None) -> SessionConfig:
    return SessionConfig.probe(
        options.uri,
        options.api_key,
        options.client_secret,
        organization_id=options.organization_id,
        connect_timeout=options.connect_timeout,
        open_timeout=options.open_timeout,
        close_timeout=options.close_timeout,
        ping_first_delay=None,
        linger_after_closed=options.linger,
        ssl_context=context,
    )


def _session_config(options: ProbeOptions, context: ssl.SSLContext | None) -> SessionConfig:
    # Long enough for the first ping (1 s after opened) and the one that follows its pong.
    seconds = max(options.seconds, options.ping_first_delay + 0.2)
    return SessionConfig(
        uri=options.uri,
        api_key=options.api_key,
        client_secret=options.client_secret,
        organization_id=options.organization_id,
        language=options.language,
        source=tone_source(seconds),
        realtime=True,
        connect_timeout=options.connect_timeout,
        open_timeout=options.open_timeout,
        close_timeout=options.close_timeout,
        ping_first_delay=options.ping_first_delay,
        ping_interval=options.ping_interval,
        linger_after_closed=options.linger,
        ssl_context=context,
    )


def _session_step(
    name: str, title: str, result: SessionResult, options: ProbeOptions
) -> StepReport:
    findings = _session_findings(result, options)
    details = result.to_dict(include_traffic=True)
    return StepReport(name, title, _status(findings), _session_summary(result), findings, details)


async def run_probe(options: ProbeOptions) -> ProbeReport:
    """Run every step and return the report (never raises for server misbehaviour)."""
    report = ProbeReport(options.uri)
    try:
        endpoint = Endpoint.parse(options.uri)
    except ValueError as exc:
        finding = Finding("uri", "uri", str(exc), "use ws://host[:port]/path or wss://...")
        report.steps.append(StepReport("transport", "URI", "fail", "invalid URI", [finding]))
        return report
    context: ssl.SSLContext | None = None
    if endpoint.secure:
        private = private_ca_context(options.ca_file) if options.ca_file else None
        tls = await check_tls(
            endpoint.host,
            endpoint.port,
            limit=options.connect_timeout,
            context=options.trust,
            private=private,
        )
        report.steps.append(_transport_tls(tls))
        context = options.trust
        if tls.private_ca_verified:
            context = private
        elif tls.connected and not tls.verified:
            # Genesys would stop here; carry on unverified to diagnose the AudioHook side too.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    else:
        report.steps.append(_transport_plain())

    probe = await run_session(_probe_config(options, context))
    report.steps.append(_session_step("probe", "connection probe", probe, options))
    if options.probe_only:
        return report
    if not probe.connected:
        report.steps.append(
            StepReport(
                "session", "session", "skip", "skipped: the connection probe did not connect"
            )
        )
        return report
    session = await run_session(_session_config(options, context))
    report.steps.append(_session_step("session", "session", session, options))
    return report


# --- CLI -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Check an AudioHook server the way Genesys Cloud does: the connection probe, then a "
        "short real session, with a verdict per step. Exit status 0 only if every check passed."
    )
    parser.add_argument("uri", help="ws:// or wss:// URI of the AudioHook endpoint")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("AUDIOHOOK_PROBE_API_KEY"),
        help="API key of the integration (default: $AUDIOHOOK_PROBE_API_KEY)",
    )
    parser.add_argument(
        "--client-secret",
        default=os.environ.get("AUDIOHOOK_PROBE_CLIENT_SECRET"),
        help="base64 client secret; omit to send an unsigned upgrade "
        "(default: $AUDIOHOOK_PROBE_CLIENT_SECRET)",
    )
    parser.add_argument("--org", help="Genesys organization id to send (default: random UUID)")
    parser.add_argument("--probe-only", action="store_true", help="run only the connection probe")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds allowed for 'opened' after 'open' (Genesys: 5)",
    )
    parser.add_argument(
        "--close-timeout",
        type=float,
        default=10.0,
        help="seconds allowed for 'closed' after 'close' (Genesys: 10)",
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=10.0, help="seconds allowed for connecting"
    )
    parser.add_argument(
        "--seconds", type=float, default=1.2, help="audio length of the real session"
    )
    parser.add_argument(
        "--language", default=_DEFAULT_LANGUAGE, help="language of the real session's open"
    )
    parser.add_argument(
        "--ca-file",
        help="PEM file of a private CA (a staging endpoint): the sessions verify against it; "
        "the TLS verdict still uses public CAs only (certifi's bundle, never SSL_CERT_FILE)",
    )


def options_from_args(args: argparse.Namespace) -> ProbeOptions:
    options = ProbeOptions(
        uri=args.uri,
        api_key=args.api_key,
        client_secret=args.client_secret or None,
        probe_only=args.probe_only,
        language=args.language,
        seconds=args.seconds,
        connect_timeout=args.connect_timeout,
        open_timeout=args.timeout,
        close_timeout=args.close_timeout,
        ca_file=args.ca_file,
    )
    if args.org:
        options.organization_id = args.org
    return options


async def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    if not args.api_key:
        print("probe: --api-key is required", file=sys.stderr)
        return 2
    if args.ca_file:
        try:
            private_ca_context(args.ca_file)
        except OSError as exc:
            print(f"probe: --ca-file {args.ca_file}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    report = await run_probe(options_from_args(args))
    if args.json:
        stream.write(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    else:
        stream.write(report.render() + "\n")
    return 0 if report.ok else 1
