"""A loopback stand-in for the Genesys Cloud login and IP-ranges endpoints.

A real HTTP server on 127.0.0.1 (http.server in a thread) that answers

- `POST /oauth/token` (client credentials, HTTP Basic) with `{"access_token": ...}`;
- `GET /api/v2/ipranges` (Bearer token) with `{"entities": [{"cidr", "service", "region"}]}`.

Tests change `entities`, make it answer an error status (`fail_with`), or stop it entirely.
Point the gateway at it with `genesys_login_base_url` / `genesys_api_base_url` = `base_url`.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

DEFAULT_ENTITIES: list[dict[str, str]] = [
    {"cidr": "198.51.100.0/24", "service": "audiohook", "region": "us-east-1"},
    {"cidr": "2001:db8:10::/48", "service": "audiohook", "region": "us-east-1"},
    {"cidr": "203.0.113.64/26", "service": "audiohook", "region": "eu-central-1"},
    {"cidr": "192.0.2.0/24", "service": "api", "region": "us-east-1"},
    {"cidr": "100.64.0.0/16", "service": "smtp", "region": "eu-central-1"},
]


class GenesysApiStandIn:
    def __init__(
        self,
        client_id: str = "test-client",
        client_secret: str = "test-secret",
        entities: list[dict[str, Any]] | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.entities: list[dict[str, Any]] = list(
            DEFAULT_ENTITIES if entities is None else entities
        )
        self.fail_with: int | None = None  # answer every request with this status
        self.token_requests = 0
        self.ranges_requests = 0
        self._tokens: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                with stand_in._lock:
                    stand_in.token_requests += 1
                    fail_with = stand_in.fail_with
                if fail_with is not None:
                    return self._reply(fail_with, {"message": "unavailable"})
                if self.path != "/oauth/token":
                    return self._reply(404, {"message": "not found"})
                expected = base64.b64encode(
                    f"{stand_in.client_id}:{stand_in.client_secret}".encode()
                ).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    return self._reply(401, {"error": "invalid_client"})
                if form.get("grant_type") != ["client_credentials"]:
                    return self._reply(400, {"error": "unsupported_grant_type"})
                token = secrets.token_urlsafe(24)
                with stand_in._lock:
                    stand_in._tokens.add(token)
                return self._reply(
                    200, {"access_token": token, "token_type": "bearer", "expires_in": 86400}
                )

            def do_GET(self) -> None:
                with stand_in._lock:
                    stand_in.ranges_requests += 1
                    fail_with = stand_in.fail_with
                    tokens = set(stand_in._tokens)
                    entities = list(stand_in.entities)
                if fail_with is not None:
                    return self._reply(fail_with, {"message": "unavailable"})
                if self.path != "/api/v2/ipranges":
                    return self._reply(404, {"message": "not found"})
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in tokens:
                    return self._reply(401, {"message": "bad token"})
                return self._reply(200, {"entities": entities})

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Shut the server down (connections are refused until start() on the same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> GenesysApiStandIn:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
