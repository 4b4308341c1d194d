"""The gateway's listeners accept connections from the moment they are bound.

Readiness is answered by the metrics listener, which can come up a moment before the main
listener serves; a call placed in that moment must wait in the backlog, not be refused.
"""

from __future__ import annotations

import socket

from app.server import bind_listener


def test_a_bound_listener_queues_connections_before_any_server_runs() -> None:
    listener = bind_listener("AUDIOHOOK_PORT", "127.0.0.1", 0)
    try:
        with socket.create_connection(listener.getsockname(), timeout=2):
            accepted, _ = listener.accept()  # it was waiting in the backlog
            accepted.close()
    finally:
        listener.close()
