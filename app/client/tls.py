"""TLS check of a wss:// endpoint the way Genesys sees it: handshake time, whether the chain
verifies against public CAs (Genesys refuses self-signed and private CAs), whether it verifies
against a private CA given with --ca-file instead, and when the certificate expires.

The public verdict uses a public CA bundle only (`public_ca_context`): certifi's copy of the
Mozilla list, or failing that the system store at OpenSSL's built-in location. SSL_CERT_FILE
and SSL_CERT_DIR are ignored for it, so a private CA exported for other tools cannot turn a
certificate Genesys would refuse into a pass."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass(slots=True)
class TlsReport:
    host: str
    port: int
    connected: bool = False
    handshake_seconds: float | None = None
    verified: bool = False
    verify_error: str | None = None
    protocol: str | None = None
    subject: str | None = None
    issuer: str | None = None
    self_signed: bool | None = None
    not_after: dt.datetime | None = None
    days_left: float | None = None
    error: str | None = None
    trust: str | None = None  # which CAs the public verdict used
    private_ca_verified: bool | None = None  # against --ca-file, when one was given

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "connected": self.connected,
            "handshake_seconds": self.handshake_seconds,
            "verified": self.verified,
            "verify_error": self.verify_error,
            "protocol": self.protocol,
            "subject": self.subject,
            "issuer": self.issuer,
            "self_signed": self.self_signed,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "days_left": self.days_left,
            "error": self.error,
            "trust": self.trust,
            "private_ca_verified": self.private_ca_verified,
        }


def public_ca_context() -> tuple[ssl.SSLContext, str]:
    """A verifying client context that trusts public CAs only, and what they are. Never reads
    SSL_CERT_FILE or SSL_CERT_DIR (an override may name a private CA)."""
    try:
        import certifi
    except ImportError:
        paths = ssl.get_default_verify_paths()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
        capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
        if cafile or capath:
            context.load_verify_locations(cafile=cafile, capath=capath)
        return context, "the system CA store"
    return ssl.create_default_context(cafile=certifi.where()), "certifi's public CA bundle"


def private_ca_context(ca_file: str) -> ssl.SSLContext:
    """A verifying client context that trusts only the CA certificates in `ca_file` (PEM);
    OSError (ssl.SSLError included) when the file cannot be read or holds no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca_file)
    return context


async def _handshake(
    host: str, port: int, context: ssl.SSLContext, limit: float
) -> tuple[float, ssl.SSLObject | None]:
    started = time.perf_counter()
    async with asyncio.timeout(limit):
        _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    elapsed = time.perf_counter() - started
    ssl_object = writer.get_extra_info("ssl_object")
    info = ssl_object if isinstance(ssl_object, ssl.SSLObject) else None
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return elapsed, info


def _name(name: x509.Name) -> str:
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else name.rfc4514_string()


async def check_tls(
    host: str,
    port: int,
    *,
    limit: float = 10.0,
    context: ssl.SSLContext | None = None,
    private: ssl.SSLContext | None = None,
    now: dt.datetime | None = None,
) -> TlsReport:
    """Handshake trusting public CAs only (`context` replaces them, for tests); if that fails
    verification, against the `private` CA when one is given, else once more without
    verification so the certificate can still be described."""
    report = TlsReport(host, port)
    if context is None:
        verifying, report.trust = public_ca_context()
    else:
        verifying, report.trust = context, "the given trust store"
    try:
        report.handshake_seconds, info = await _handshake(host, port, verifying, limit)
        report.verified = True
    except ssl.SSLCertVerificationError as exc:
        report.verify_error = exc.verify_message or str(exc)
        if private is not None:
            try:
                await _handshake(host, port, private, limit)
                report.private_ca_verified = True
            except ssl.SSLCertVerificationError:
                report.private_ca_verified = False
            except (OSError, TimeoutError) as private_exc:
                report.error = f"{type(private_exc).__name__}: {private_exc}"
                return report
        relaxed = ssl.create_default_context()
        relaxed.check_hostname = False
        relaxed.verify_mode = ssl.CERT_NONE
        try:
            report.handshake_seconds, info = await _handshake(host, port, relaxed, limit)
        except (OSError, TimeoutError) as retry_exc:
            report.error = f"{type(retry_exc).__name__}: {retry_exc}"
            return report
    except (OSError, TimeoutError) as exc:
        report.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return report
    report.connected = True
    if info is None:
        return report
    report.protocol = info.version()
    der = info.getpeercert(binary_form=True)
    if der:
        cert = x509.load_der_x509_certificate(der)
        report.subject = _name(cert.subject)
        report.issuer = _name(cert.issuer)
        report.self_signed = cert.subject == cert.issuer
        report.not_after = cert.not_valid_after_utc
        current = now or dt.datetime.now(dt.UTC)
        report.days_left = (report.not_after - current).total_seconds() / 86400
    return report
