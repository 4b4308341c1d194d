"""`audiohook-gateway probe` against small AudioHook servers on 127.0.0.1, one per fault."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import ipaddress
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.client import simulate
from app.client.checks import Finding
from app.client.probe import ProbeOptions, ProbeReport, add_arguments, run, run_probe
from app.client.tls import check_tls
from app.protocol.messages import NULL_UUID
from tests.integration.probe.conftest import API_KEY, SECRET, StartServer
from tests.integration.probe.servers import Faults

FAST = ["--timeout", "0.5", "--close-timeout", "0.5"]


async def probe_cli(url: str, *extra: str, api_key: str = API_KEY) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([url, "--api-key", api_key, "--client-secret", SECRET, *FAST, *extra])
    out = io.StringIO()
    code = await run(args, out)
    return code, out.getvalue()


async def probe_json(url: str, *extra: str, api_key: str = API_KEY) -> tuple[int, dict[str, Any]]:
    code, text = await probe_cli(url, "--json", *extra, api_key=api_key)
    return code, json.loads(text)


def options(url: str, **changes: Any) -> ProbeOptions:
    defaults: dict[str, Any] = {"open_timeout": 0.5, "close_timeout": 0.5, "linger": 0.2}
    return ProbeOptions(url, API_KEY, SECRET, **(defaults | changes))


def errors(report: ProbeReport, step: str) -> list[Finding]:
    return [f for f in report.step(step).findings if f.severity == "error"]


def step_findings(data: dict[str, Any], step: str) -> list[dict[str, Any]]:
    found = next(s for s in data["steps"] if s["name"] == step)
    return [f for f in found["findings"] if f["severity"] == "error"]


# --- a correct server --------------------------------------------------------------------------


async def test_correct_server_passes_every_step(start_server: StartServer) -> None:
    server = await start_server()
    code, text = await probe_cli(server.url)
    assert code == 0, text
    assert "[PASS] connection probe: opened in" in text
    assert "[PASS] session: opened in" in text
    assert text.rstrip().endswith("Result: PASS")
    assert [c.signature_ok for c in server.connections] == [True, True]


async def test_the_probe_sends_what_genesys_sends(start_server: StartServer) -> None:
    server = await start_server()
    org = "d7934305-0972-4844-938e-9060eef73d05"
    code, _ = await probe_cli(server.url, "--probe-only", "--org", org)
    assert code == 0
    (conn,) = server.connections
    assert conn.headers["Audiohook-Organization-Id"] == org
    assert conn.path == "/api/v1/audiohook/ws"
    open_message, close_message = conn.messages
    params = open_message["parameters"]
    assert params["conversationId"] == NULL_UUID
    assert params["participant"] == {"id": NULL_UUID, "ani": "", "aniName": "", "dnis": ""}
    assert params["language"] is None
    assert params["customConfig"] == {}
    assert [m["channels"] for m in params["media"]] == [
        ["external", "internal"],
        ["external"],
        ["internal"],
    ]
    assert {m["format"] for m in params["media"]} == {"PCMU"}
    assert conn.frames == [b""]  # one zero-length frame, because media was selected
    assert close_message["type"] == "close"
    assert close_message["parameters"] == {"reason": "end"}
    assert (close_message["seq"], close_message["serverseq"]) == (2, 1)


async def test_the_real_session_streams_pings_and_closes(start_server: StartServer) -> None:
    server = await start_server()
    report = await run_probe(options(server.url, seconds=1.0, ping_first_delay=0.3))
    assert report.ok, report.render()
    session = server.connections[1]
    params = session.messages[0]["parameters"]
    assert params["conversationId"] != NULL_UUID
    assert params["language"] == "en-US"
    assert len(session.of_type("ping")) >= 2
    assert session.frames
    assert {len(frame) for frame in session.frames} == {3200}
    assert session.messages[-1]["parameters"] == {"reason": "end"}


async def test_no_media_selected_means_no_frame(start_server: StartServer) -> None:
    server = await start_server(Faults(opened_media="none"))
    code, _ = await probe_cli(server.url, "--probe-only")
    assert code == 0
    assert server.connections[0].frames == []


# --- broken servers ----------------------------------------------------------------------------


async def test_wrong_closed_clientseq(start_server: StartServer) -> None:
    server = await start_server(Faults(closed_clientseq_offset=-1))
    code, text = await probe_cli(server.url, "--probe-only")
    assert code == 1
    assert (
        "closed.clientseq is 1, expected 2: your server must echo the seq of the close it answers"
        in text
    )
    assert "[FAIL] connection probe" in text
    assert "Result: FAIL (1 problem)" in text


async def test_binary_framed_json(start_server: StartServer) -> None:
    server = await start_server(Faults(binary_json=True))
    code, data = await probe_json(server.url, "--probe-only")
    assert code == 1
    assert data["ok"] is False
    first = step_findings(data, "probe")[0]
    assert (first["rule"], first["field"], first["error_code"]) == ("binary-frame", "frame", 415)
    assert "holding a JSON 'opened' message" in first["message"]
    assert "text frames" in first["hint"]
    # Like Genesys, the client reported the problem and closed with reason error.
    sent = server.connections[0].messages
    assert [m["type"] for m in sent[:3]] == ["open", "error", "close"]
    assert sent[1]["parameters"]["code"] == 415
    assert sent[2]["parameters"] == {"reason": "error"}


async def test_missing_parameters(start_server: StartServer) -> None:
    server = await start_server(Faults(omit_parameters=frozenset({"opened"})))
    code, data = await probe_json(server.url, "--probe-only")
    assert code == 1
    (finding,) = step_findings(data, "probe")
    assert finding["field"] == "opened.parameters"
    assert finding["message"] == "opened.parameters is missing, expected an object"


async def test_missing_parameters_on_closed(start_server: StartServer) -> None:
    server = await start_server(Faults(omit_parameters=frozenset({"closed"})))
    code, data = await probe_json(server.url, "--probe-only")
    assert code == 1
    assert [f["field"] for f in step_findings(data, "probe")] == ["closed.parameters"]


async def test_opened_with_media_not_offered(start_server: StartServer) -> None:
    server = await start_server(Faults(opened_media="unoffered"))
    code, data = await probe_json(server.url, "--probe-only")
    assert code == 1
    (finding,) = step_findings(data, "probe")
    assert finding["field"] == "opened.parameters.media[0]"
    assert finding["actual"]["format"] == "L16"
    assert finding["error_code"] == 400
    assert "PCMU[external,internal]@8000" in finding["expected"]
    assert server.connections[0].frames == []  # no audio after a bad opened


async def test_opened_with_channels_reordered(start_server: StartServer) -> None:
    server = await start_server(Faults(opened_media="reordered"))
    code, data = await probe_json(server.url, "--probe-only")
    assert code == 1
    (finding,) = step_findings(data, "probe")
    assert "keep the channel order of the offer" in finding["hint"]


async def test_no_closed(start_server: StartServer) -> None:
    server = await start_server(Faults(answer_close=False))
    started = time.monotonic()
    code, data = await probe_json(server.url, "--probe-only")
    assert time.monotonic() - started >= 0.5
    assert code == 1
    (finding,) = step_findings(data, "probe")
    assert finding["rule"] == "closed-timeout"
    assert "Close transaction timed out" in finding["hint"]


async def test_slow_opened(start_server: StartServer) -> None:
    server = await start_server(Faults(opened_delay=0.8))
    started = time.monotonic()
    code, data = await probe_json(server.url, "--probe-only")
    assert time.monotonic() - started >= 0.5
    assert code == 1
    rules = [f["rule"] for f in step_findings(data, "probe")]
    assert rules[0] == "opened-timeout"
    assert "Genesys gives up after 5 s" in step_findings(data, "probe")[0]["hint"]
    sent = server.connections[0].messages
    assert [m["type"] for m in sent] == ["open", "error", "close"]
    assert sent[1]["parameters"]["code"] == 408
    assert sent[2]["parameters"] == {"reason": "error"}


async def test_server_seq_that_skips(start_server: StartServer) -> None:
    server = await start_server(Faults(seq_skip_at=1))
    report = await run_probe(options(server.url, probe_only=True))
    assert not report.ok
    assert errors(report, "probe")[0].text.startswith("opened.seq is 2, expected 1")


async def test_wrong_pong_clientseq(start_server: StartServer) -> None:
    server = await start_server(Faults(pong_clientseq_offset=-1))
    report = await run_probe(options(server.url, seconds=0.6, ping_first_delay=0.2))
    assert report.step("probe").status != "fail"  # the probe does not ping
    fields = {f.field for f in errors(report, "session")}
    assert fields == {"pong.clientseq"}
    assert "echo the seq of the ping" in errors(report, "session")[0].hint


async def test_no_pong(start_server: StartServer) -> None:
    server = await start_server(Faults(answer_ping=False))
    report = await run_probe(
        options(server.url, seconds=1.0, ping_first_delay=0.1, ping_interval=0.3)
    )
    assert [f.rule for f in errors(report, "session")] == ["pong-timeout"]
    sent = server.connections[1].messages
    error = next(m for m in sent if m["type"] == "error")
    assert error["parameters"]["code"] == 408
    assert sent[-1]["type"] == "close"
    assert sent[-1]["parameters"] == {"reason": "error"}


async def test_message_after_closed(start_server: StartServer) -> None:
    server = await start_server(Faults(message_after_closed=True))
    report = await run_probe(options(server.url, probe_only=True))
    (finding,) = errors(report, "probe")
    assert finding.rule == "after-closed"
    assert "nothing may follow 'closed'" in finding.hint


async def test_socket_dropped_instead_of_closed(start_server: StartServer) -> None:
    server = await start_server(Faults(close_socket_on_close=True))
    report = await run_probe(options(server.url, probe_only=True))
    (finding,) = errors(report, "probe")
    assert finding.rule == "socket-closed"
    assert "send closed before closing" in finding.hint


async def test_wrong_api_key_gets_a_credentials_hint(start_server: StartServer) -> None:
    server = await start_server()
    code, text = await probe_cli(server.url, "--probe-only", api_key="not-the-key")
    assert code == 1
    assert "the server disconnected: unauthorized (FAILED: bad key)" in text
    assert "check the API key and client secret" in text
    sent = server.connections[0].messages
    assert sent[-1]["parameters"] == {"reason": "disconnect"}  # the client answers with close


async def test_wrong_secret_fails_the_signature(start_server: StartServer) -> None:
    server = await start_server(client_secret="c2VjcmV0LXRoYXQtZG9lcy1ub3QtbWF0Y2g=")
    code, _ = await probe_cli(server.url, "--probe-only")
    assert code == 1
    assert server.connections[0].signature_ok is False


async def test_http_rejections_are_explained(start_server: StartServer) -> None:
    hints = {
        401: "check the API key and client secret",
        403: "allowlist",
        503: "not ready",
    }
    for status, hint in hints.items():
        server = await start_server(Faults(reject_status=status))
        code, data = await probe_json(server.url)
        assert code == 1
        (finding,) = step_findings(data, "probe")
        assert finding["rule"] == "http-status"
        assert finding["actual"] == status
        assert hint in finding["hint"]
        assert data["steps"][-1]["status"] == "skip"  # no point in a session


async def test_nothing_listening() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = await run_probe(options(f"ws://127.0.0.1:{port}/ws"))
    (finding,) = errors(report, "probe")
    assert finding.rule == "connect"
    assert "nothing listens" in finding.hint
    assert not report.ok


async def test_invalid_uri_is_a_failed_step() -> None:
    report = await run_probe(options("http://127.0.0.1/ws"))
    assert not report.ok
    assert report.steps[0].findings[0].rule == "uri"


async def test_missing_api_key_is_a_usage_error() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["ws://127.0.0.1:1/ws"])
    args.api_key = None
    assert await run(args, io.StringIO()) == 2


# --- TLS ----------------------------------------------------------------------------------------


def _certificate(
    tmp_path: Path,
    *,
    days: int,
    issuer_key: Any = None,
    issuer: Any = None,
    common_name: str = "127.0.0.1",
) -> tuple[Path, Path, Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    cert_path = tmp_path / f"cert-{days}.pem"
    key_path = tmp_path / f"key-{days}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert, key


def _server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


async def test_self_signed_certificate_fails_but_audiohook_is_still_checked(
    start_server: StartServer, tmp_path: Path
) -> None:
    cert_path, key_path, _, _ = _certificate(tmp_path, days=90)
    server = await start_server(serve={"ssl": _server_context(cert_path, key_path)})
    assert server.url.startswith("wss://")
    code, data = await probe_json(server.url, "--probe-only")
    assert code == 1
    transport = data["steps"][0]
    assert transport["name"] == "transport"
    assert transport["status"] == "fail"
    (finding,) = transport["findings"]
    assert finding["rule"] == "tls-verify"
    assert "self-signed" in finding["hint"]
    assert transport["details"]["self_signed"] is True
    assert 88 < transport["details"]["days_left"] < 91
    assert transport["details"]["handshake_seconds"] > 0
    assert data["steps"][1]["status"] == "pass"  # the AudioHook side was still exercised


async def test_trusted_chain_passes_and_near_expiry_warns(
    start_server: StartServer, tmp_path: Path
) -> None:
    ca_path, _, ca_cert, ca_key = _certificate(tmp_path, days=365, common_name="Test CA")
    leaf_dir = tmp_path / "leaf"
    leaf_dir.mkdir()
    cert_path, key_path, _, _ = _certificate(leaf_dir, days=5, issuer_key=ca_key, issuer=ca_cert)
    server = await start_server(serve={"ssl": _server_context(cert_path, key_path)})
    trust = ssl.create_default_context(cafile=str(ca_path))
    report = await run_probe(options(server.url, probe_only=True, trust=trust))
    transport = report.step("transport")
    assert report.ok, report.render()
    assert transport.status == "warn"
    assert [f.rule for f in transport.findings] == ["tls-expiring"]
    assert "chain verifies against public CAs" in transport.summary
    assert [c.signature_ok for c in server.connections] == [True]


async def test_concurrent_probes_do_not_interfere(start_server: StartServer) -> None:
    server = await start_server()
    reports = await asyncio.gather(
        *(run_probe(options(server.url, probe_only=True)) for _ in range(10))
    )
    assert all(report.ok for report in reports)
    assert len({c.headers["Audiohook-Session-Id"] for c in server.connections}) == 10


# --- a private CA: --ca-file, and SSL_CERT_FILE never passes the public verdict ---------------


def _private_ca_server_files(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A private CA and a server context whose leaf it signed; returns the CA's PEM path."""
    ca_path, _, ca_cert, ca_key = _certificate(tmp_path, days=365, common_name="Staging CA")
    leaf_dir = tmp_path / "leaf"
    leaf_dir.mkdir()
    cert_path, key_path, _, _ = _certificate(leaf_dir, days=90, issuer_key=ca_key, issuer=ca_cert)
    return ca_path, _server_context(cert_path, key_path)


async def test_ca_file_verifies_a_staging_endpoint_and_says_it_is_private(
    start_server: StartServer, tmp_path: Path
) -> None:
    ca_path, context = _private_ca_server_files(tmp_path)
    server = await start_server(serve={"ssl": context})
    code, data = await probe_json(server.url, "--ca-file", str(ca_path))
    assert code == 0, data
    transport = data["steps"][0]
    assert transport["status"] == "warn"
    assert [f["rule"] for f in transport["findings"]] == ["tls-private-ca"]
    assert "chain verifies against --ca-file only" in transport["summary"]
    assert transport["details"]["private_ca_verified"] is True
    assert transport["details"]["verified"] is False
    assert [step["status"] for step in data["steps"][1:]] == ["pass", "pass"]


async def test_ca_file_of_another_ca_still_fails(start_server: StartServer, tmp_path: Path) -> None:
    _, context = _private_ca_server_files(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_ca, _, _, _ = _certificate(other_dir, days=365, common_name="Other CA")
    server = await start_server(serve={"ssl": context})
    code, data = await probe_json(server.url, "--probe-only", "--ca-file", str(other_ca))
    assert code == 1
    (finding,) = data["steps"][0]["findings"]
    assert finding["rule"] == "tls-verify"
    assert "--ca-file either" in finding["hint"]


async def test_unreadable_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    code, _ = await probe_cli("wss://127.0.0.1:1/ws", "--ca-file", str(tmp_path / "missing.pem"))
    assert code == 2


async def test_ssl_cert_file_does_not_make_a_private_ca_public(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_path, context = _private_ca_server_files(tmp_path)
    server = await start_server(serve={"ssl": context})
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_path))
    # The override is in force: Python's default context now trusts the private CA ...
    host, port = server.url.removeprefix("wss://").split("/")[0].split(":")
    overridden = await check_tls(host, int(port), context=ssl.create_default_context())
    assert overridden.verified
    # ... but the probe's public verdict ignores it, and says which CAs it used.
    code, data = await probe_json(server.url, "--probe-only")
    assert code == 1
    transport = data["steps"][0]
    assert transport["status"] == "fail"
    (finding,) = transport["findings"]
    assert finding["rule"] == "tls-verify"
    assert "certifi's public CA bundle" in finding["message"]
    assert "SSL_CERT_FILE is not used" in finding["message"]
    assert transport["details"]["trust"] == "certifi's public CA bundle"


async def test_simulate_verifies_against_the_ca_file(
    start_server: StartServer, tmp_path: Path
) -> None:
    ca_path, context = _private_ca_server_files(tmp_path)
    server = await start_server(serve={"ssl": context})

    async def simulate_cli(*extra: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser()
        simulate.add_arguments(parser)
        argv = ["--uri", server.url, "--api-key", API_KEY, "--client-secret", SECRET]
        args = parser.parse_args([*argv, "--probe", "--close-timeout", "2", *extra])
        out = io.StringIO()
        return await simulate.run(args, out), out.getvalue()

    code, text = await simulate_cli("--ca-file", str(ca_path))
    assert code == 0, text
    assert "closed 1, ok 1" in text
    code, text = await simulate_cli()  # the system's CAs do not know the private one
    assert code == 1
    assert "ok 0" in text
    assert [c.signature_ok for c in server.connections] == [True]
