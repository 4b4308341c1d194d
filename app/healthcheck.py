"""``audiohook-gateway healthcheck``: the container HEALTHCHECK, checking what a client reaches.

A client outside the container reaches the gateway on the container's own address, never on
its loopback: a listener bound to 127.0.0.1 inside a container answers a loopback check while
every published port resets. So the check connects to the address the container's host name
resolves to (its interface on the container network), falling back to the configured address
(or loopback for a wildcard) only when there is no such address (host networking):

- the metrics listener's /healthz answers 2xx (or the main port's, with AUDIOHOOK_METRICS_PORT=0);
- the AudioHook listener accepts a TCP connection (no request is sent: nothing is counted).

Exit 0 when both hold, 1 otherwise with one line saying which and what to set.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import urllib.error
import urllib.request

WILDCARDS = frozenset({"0.0.0.0", "::", ""})
# Straight to the listener: an HTTP(S)_PROXY in the container's environment must not apply.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def client_address(configured: str, given: str | None = None) -> str:
    """The address a client outside this host or container would connect to."""
    if given:
        return given
    try:
        own = socket.gethostbyname(socket.gethostname())
    except OSError:
        own = ""
    if own and not ipaddress.ip_address(own).is_loopback:
        return own
    return "127.0.0.1" if configured in WILDCARDS else configured.strip("[]")


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def check(
    host: str,
    port: int,
    metrics_host: str,
    metrics_port: int,
    timeout: float,
    address: str | None = None,
) -> str:
    """'' when healthy, else one line describing the problem."""
    health_port, health_var, health_host = (
        (metrics_port, "AUDIOHOOK_METRICS_HOST", metrics_host)
        if metrics_port
        else (port, "AUDIOHOOK_HOST", host)
    )
    given = address
    address = client_address(health_host, given)
    url = f"http://{_url_host(address)}:{health_port}/healthz"
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            if not 200 <= response.status < 300:
                return f"{url} answered {response.status}"
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror
        return (
            f"{url} unreachable ({reason}): is {health_var}={health_host} an address clients "
            "reach? Inside a container it must be 0.0.0.0"
        )
    if metrics_port:
        address = client_address(host, given)
        try:
            with socket.create_connection((address, port), timeout=timeout):
                pass
        except OSError as exc:
            return (
                f"AudioHook listener {_url_host(address)}:{port} unreachable "
                f"({exc.strerror or exc}): is AUDIOHOOK_HOST={host} an address clients reach? "
                "Inside a container it must be 0.0.0.0"
            )
    return ""


def run(args: argparse.Namespace) -> int:
    from app import preflight

    try:
        settings = preflight.load_checked_settings(None)
    except preflight.ConfigProblems as exc:
        return preflight.report(exc.problems, "healthcheck")
    problem = check(
        settings.host,
        settings.port,
        settings.metrics_host,
        settings.metrics_port,
        args.timeout,
        args.address,
    )
    if problem:
        print(f"audiohook-gateway healthcheck: {problem}", file=sys.stderr)
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Connect to this address (default: the one this host name resolves to, as a "
        "client outside the container would; the configured one without such an address).",
    )
    parser.add_argument(
        "--timeout", type=float, default=4.0, help="Seconds to wait for each listener."
    )
