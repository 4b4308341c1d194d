from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.integration.probe.servers import Faults, MiniServer

API_KEY = "probe-test-key"
SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

StartServer = Callable[..., Awaitable[MiniServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start MiniServers on 127.0.0.1 (port 0); all are stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(faults: Faults | None = None, **kwargs: Any) -> MiniServer:
            serve_kwargs = kwargs.pop("serve", {})
            kwargs.setdefault("api_key", API_KEY)
            kwargs.setdefault("client_secret", SECRET)
            server = MiniServer(faults, **kwargs)
            await stack.enter_async_context(server.running(**serve_kwargs))
            return server

        yield start
