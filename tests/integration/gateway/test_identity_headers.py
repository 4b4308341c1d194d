"""Identity headers sent twice are refused with HTTP 400 before authentication, counted once
and logged once, and the gateway keeps serving."""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.integration.gateway.helpers import wait_for_log
from tests.support.gateway_process import GatewayProcess
from tests.support.metrics import REJECTED, metric_value
from tests.support.raw_client import RawClient

IDENTITY_HEADERS = [
    "Host",
    "Audiohook-Session-Id",
    "Audiohook-Organization-Id",
    "Audiohook-Correlation-Id",
    "X-API-KEY",
    "Signature",
    "Signature-Input",
]


async def upgrade_status(uri: str, headers: list[tuple[str, str]]) -> int:
    try:
        async with connect(uri, additional_headers=headers, proxy=None, open_timeout=5):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.mark.parametrize("header", IDENTITY_HEADERS)
@pytest.mark.parametrize("same_value", [True, False], ids=["same value", "other value"])
async def test_a_duplicated_identity_header_is_refused(
    gateway: GatewayProcess, header: str, same_value: bool
) -> None:
    request = RawClient.request(gateway.ws_url)
    pairs = list(request.headers.items())
    if header == "Host":  # the client library writes Host itself
        value = f"127.0.0.1:{gateway.port}" if same_value else "evil.example"
    else:
        value = request.headers[header] if same_value else request.headers[header] + "0"
    before = metric_value(gateway, REJECTED, cause="duplicate_header")
    assert await upgrade_status(gateway.ws_url, [*pairs, (header, value)]) == 400
    assert metric_value(gateway, REJECTED, cause="duplicate_header") == before + 1
    record = await wait_for_log(
        gateway,
        lambda r: (
            r.get("cause") == "duplicate_header" and r.get("session_id") == request.session_id
        ),
    )
    assert record["header"] == header.lower()
    assert record["status"] == 400
    lines = [r for r in gateway.log_records() if r.get("session_id") == request.session_id]
    assert len(lines) == 1  # logged once, and nothing else was done for it
    # The same request without the duplicate still works (a fresh nonce).
    async with await RawClient.connect(gateway.ws_url) as client:
        await client.open()
        await client.close()
