"""HTTP publishers for backend services: :class:`Publisher` (sync) and :class:`AsyncPublisher`.

Both speak the HTTP API of DESIGN.md; a failure raises :class:`PublishError`
carrying the HTTP status (503 means "temporary, retry"). Nothing is dropped
silently.
"""

from __future__ import annotations

from typing import Any, Self

import httpx

from tidings.server.protocol import StreamPosition

__all__ = ["AsyncPublisher", "PublishError", "Publisher"]


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


def _result(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        message = body.get("error", {}).get("message", "") if isinstance(body, dict) else response.text[:200]
        raise PublishError(response.status_code, message or response.reason_phrase)
    if not isinstance(body, dict):
        raise PublishError(response.status_code, "the gateway answered with something else than a JSON object")
    return body


class Publisher:
    """Synchronous HTTP publisher. Use as a context manager, or call ``close()``."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 5.0) -> None:
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=_headers(api_key), timeout=timeout)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call any API route; returns the JSON object, raises PublishError."""
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise PublishError(0, f"gateway unreachable: {type(exc).__name__}") from exc
        return _result(response)

    def publish(self, channel: str, data: Any) -> StreamPosition:
        """Publish ``data`` to ``channel``; returns its position in the channel's history."""
        result = self.request("POST", "/api/publish", {"channel": channel, "data": data})
        return StreamPosition(result["epoch"], result["offset"])

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
            response = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise PublishError(0, f"gateway unreachable: {type(exc).__name__}") from exc
        return _result(response)

    async def publish(self, channel: str, data: Any) -> StreamPosition:
        """Publish ``data`` to ``channel``; returns its position in the channel's history."""
        result = await self.request("POST", "/api/publish", {"channel": channel, "data": data})
        return StreamPosition(result["epoch"], result["offset"])

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
