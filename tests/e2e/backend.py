"""What a backend service does over the HTTP API (DESIGN.md "HTTP API"), for the browser tests."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from ..support.timing import UNIT

__all__ = ["notify", "post", "publish"]


def post(base_url: str, path: str, body: dict[str, Any], *, api_key: str | None = None) -> dict[str, Any]:
    """POST JSON to a node; ``api_key`` None suits a dev node without keys (its API is open)."""
    headers = {"content-type": "application/json"}
    if api_key is not None:
        headers["authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(
        f"{base_url}{path}", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10 * UNIT) as response:
        result: dict[str, Any] = json.load(response)
    return result


def publish(base_url: str, channel: str, data: Any, *, api_key: str | None = None) -> dict[str, Any]:
    return post(base_url, "/api/publish", {"channel": channel, "data": data}, api_key=api_key)


def notify(base_url: str, users: list[str], *, api_key: str | None = None, **fields: Any) -> dict[str, Any]:
    """``POST /api/notifications`` to ``users``; ``fields`` are type, severity, title, body, data."""
    return post(base_url, "/api/notifications", {"users": users, **fields}, api_key=api_key)
