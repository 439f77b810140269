"""HTTP publishers for backend services: :class:`Publisher` (sync) and :class:`AsyncPublisher`.

Both speak the HTTP API of DESIGN.md; a failure raises :class:`PublishError`
carrying the HTTP status (503 means "temporary, retry"). Nothing is dropped
silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Required, Self, TypedDict, Unpack

import httpx

from tidings.server.gateway.protocol import StreamPosition

__all__ = ["AsyncPublisher", "NotifyFields", "PublishError", "Publisher", "notify_body"]


class PublishError(Exception):
    """The gateway refused or could not take the request. ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message

    @property
    def temporary(self) -> bool:
        return self.status in (0, 429, 502, 503, 504)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _json_body(method: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
    """What to send as JSON: a POST always carries a JSON body, if only ``{}``.

    The gateway refuses a POST without ``Content-Type: application/json`` (415), even an empty one.
    """
    return {} if body is None and method.upper() == "POST" else body


class NotifyFields(TypedDict, total=False):
    """The arguments of ``notify`` (see :func:`notify_body`)."""

    title: Required[str]
    users: Sequence[str] | None
    topic: str | None
    all_users: bool
    type: str
    severity: str
    body: str
    data: Any
    dedupe_key: str | None
    deliver_at: float | str | datetime | None


def notify_body(
    *,
    title: str,
    users: Sequence[str] | None = None,
    topic: str | None = None,
    all_users: bool = False,
    type: str = "notification",
    severity: str = "info",
    body: str = "",
    data: Any = None,
    dedupe_key: str | None = None,
    deliver_at: float | str | datetime | None = None,
) -> dict[str, Any]:
    """The ``POST /api/notifications`` body; give exactly one of ``users``, ``topic``, ``all_users``.

    ``deliver_at`` is epoch seconds, an ISO 8601 string or an aware ``datetime``; the gateway
    checks everything.
    """
    result: dict[str, Any] = {"type": type, "severity": severity, "title": title, "body": body, "data": data}
    if users is not None:
        result["users"] = list(users)
    if topic is not None:
        result["topic"] = topic
    if all_users:
        result["all"] = True
    if dedupe_key is not None:
        result["dedupe_key"] = dedupe_key
    if deliver_at is not None:
        result["deliver_at"] = deliver_at.isoformat() if isinstance(deliver_at, datetime) else deliver_at
    return result


def _result(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        message = body.get("error", {}).get("message", "") if isinstance(body, dict) else response.text[:200]
        raise PublishError(response.status_code, message or response.reason_phrase)
    if not isinstance(body, dict):
        raise PublishError(
            response.status_code, "the gateway answered with something else than a JSON object"
        )
    return body


class Publisher:
    """Synchronous HTTP publisher. Use as a context manager, or call ``close()``."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 5.0) -> None:
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=_headers(api_key), timeout=timeout)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call any API route; returns the JSON object, raises PublishError."""
        try:
            response = self._client.request(method, path, json=_json_body(method, body))
        except httpx.HTTPError as exc:
            raise PublishError(0, f"gateway unreachable: {type(exc).__name__}") from exc
        return _result(response)

    def publish(self, channel: str, data: Any) -> StreamPosition:
        """Publish ``data`` to ``channel``; returns its position in the channel's history."""
        result = self.request("POST", "/api/publish", {"channel": channel, "data": data})
        return StreamPosition(result["epoch"], result["offset"])

    def notify(self, **fields: Unpack[NotifyFields]) -> dict[str, Any]:
        """Notify users (arguments as :func:`notify_body`); returns ``{id, recipients}``.

        With ``dedupe_key`` a retry after an error or a timeout never notifies twice.
        """
        return self.request("POST", "/api/notifications", notify_body(**fields))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher:
    """Asynchronous HTTP publisher. Use as an async context manager, or call ``aclose()``."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 5.0) -> None:
        self._client = httpx.AsyncClient(base_url=url.rstrip("/"), headers=_headers(api_key), timeout=timeout)

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call any API route; returns the JSON object, raises PublishError."""
        try:
            response = await self._client.request(method, path, json=_json_body(method, body))
        except httpx.HTTPError as exc:
            raise PublishError(0, f"gateway unreachable: {type(exc).__name__}") from exc
        return _result(response)

    async def publish(self, channel: str, data: Any) -> StreamPosition:
        """Publish ``data`` to ``channel``; returns its position in the channel's history."""
        result = await self.request("POST", "/api/publish", {"channel": channel, "data": data})
        return StreamPosition(result["epoch"], result["offset"])

    async def notify(self, **fields: Unpack[NotifyFields]) -> dict[str, Any]:
        """Notify users (arguments as :func:`notify_body`); returns ``{id, recipients}``.

        With ``dedupe_key`` a retry after an error or a timeout never notifies twice.
        """
        return await self.request("POST", "/api/notifications", notify_body(**fields))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
