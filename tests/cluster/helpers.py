"""Clients for the cluster tests: a raw protocol subscriber that hides nothing, and HTTP publishing."""

from __future__ import annotations

from typing import Any

import httpx

from loadtest.protocol_client import ProtocolClient
from tidings.server.gateway.auth import issue_token

from ..support.node import API_KEY, SECRET
from ..support.timing import UNIT

__all__ = ["open_subscriber", "publish_http"]


async def open_subscriber(url: str, user: str, channels: list[str]) -> ProtocolClient:
    """A raw protocol client of ``user`` on ``url``, subscribed to ``channels``, keeping every message it gets.

    (The SDK's Connection drops offsets it has seen; these tests must see what the server sends.)
    """
    client = (await ProtocolClient.open(url, timeout=5 * UNIT)).listen()
    await client.connect(issue_token(user, SECRET), [{"channel": channel} for channel in channels])
    return client


async def publish_http(client: httpx.AsyncClient, base_url: str, channel: str, data: Any) -> dict[str, Any]:
    """POST /api/publish on one node; returns ``{epoch, offset}``."""
    response = await client.post(
        f"{base_url}/api/publish",
        json={"channel": channel, "data": data},
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result
