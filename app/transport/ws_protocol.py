"""uvicorn's sans-I/O WebSocket protocol, with two gaps closed.

- When one TCP read holds good frames followed by a frame the parser refuses (one over the
  size limit, say), uvicorn's protocol reports only the parser error: the good frames parsed
  before it in the same read are silently dropped. Here they reach the application first, in
  order, and then the disconnect that the error causes, so no frame of a session vanishes
  uncounted.
- After the server's close frame, uvicorn reads and parses whatever the client still sends
  until the client's close frame or its close timeout, at full speed. A client that keeps
  flooding then costs parsing per frame: past `MAX_BYTES_AFTER_CLOSE` the socket is dropped.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

# Enough for the audio a real client has in flight when our close frame reaches it.
MAX_BYTES_AFTER_CLOSE = 256 * 1024


class AudioHookWebSocketProtocol(WebSocketsSansIOProtocol):
    _bytes_after_close = 0

    def data_received(self, data: bytes) -> None:
        if self.close_sent:  # uvicorn: set once the server's close frame is written
            self._bytes_after_close += len(data)
            if self._bytes_after_close > MAX_BYTES_AFTER_CLOSE:
                self.transport.abort()
                return
        self.conn.receive_data(data)
        self.handle_events()  # frames parsed before a parser error, if any
        if self.conn.parser_exc is not None:
            self.handle_parser_exception()
