"""uvicorn's sans-I/O WebSocket protocol, with every complete frame of a read delivered.

When one TCP read holds good frames followed by a frame the parser refuses (one over the size
limit, say), uvicorn's protocol reports only the parser error: the good frames parsed before it
in the same read are silently dropped. Here they reach the application first, in order, and
then the disconnect that the error causes, so no frame of a session vanishes uncounted.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class AudioHookWebSocketProtocol(WebSocketsSansIOProtocol):
    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.handle_events()  # frames parsed before a parser error, if any
        if self.conn.parser_exc is not None:
            self.handle_parser_exception()
