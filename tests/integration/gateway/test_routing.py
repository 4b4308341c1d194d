"""The AudioHook path is answered by the endpoint directly (app/main.py, GatewayApp); every
other upgrade still goes through FastAPI's router, which refuses it."""

from __future__ import annotations

import httpx
import pytest

from tests.support.gateway_process import GatewayProcess
from tests.support.raw_client import RawClient


@pytest.mark.parametrize("suffix", ["/other", "/ws/", "/ws/more", "/WS", "//ws", "/ws%2F"])
async def test_an_upgrade_to_another_path_is_refused_by_the_router(
    gateway: GatewayProcess, suffix: str
) -> None:
    uri = gateway.ws_url.removesuffix("/ws") + suffix
    # Signed for its own path: the endpoint would accept it, the router refuses it.
    rejection = await RawClient.rejection(uri)
    assert rejection.status == 403


async def test_the_audiohook_path_with_a_query_reaches_the_endpoint(
    gateway: GatewayProcess,
) -> None:
    async with await RawClient.connect(gateway.ws_url + "?probe=1") as client:
        opened = await client.open()
        assert opened.type == "opened"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_plain_http_to_the_audiohook_path_is_not_found(
    gateway: GatewayProcess, method: str
) -> None:
    http_url = "http" + gateway.ws_url.removeprefix("ws")
    async with httpx.AsyncClient() as http:
        response = await http.request(method, http_url)
    assert response.status_code == 404
