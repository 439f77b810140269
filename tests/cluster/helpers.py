"""Clients for the cluster tests: a raw WebSocket subscriber that hides nothing, and HTTP publishing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tidings.server.gateway.auth import issue_token
from tidings.server.gateway.protocol import Codec

from ..support.node import API_KEY, SECRET
from ..support.timing import UNIT, wait_until

__all__ = ["RawSubscriber", "publish_http"]


class RawSubscriber:
    """One WebSocket speaking the protocol by hand: every publication push is kept, duplicates included.

    (The SDK's Connection drops offsets it has seen; these tests must see what the server sends.)
    """

    def __init__(self, url: str, user: str) -> None:
        self.url = url
        self.user = user
        self.info: dict[str, Any] = {}
        self.publications: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []  # every other push (join, leave, unsubscribe, ...)
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def open(self, channels: list[str]) -> RawSubscriber:
        self._socket = await connect(
            self.url, subprotocols=[Subprotocol(Codec.JSON.value)], open_timeout=5 * UNIT
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        subscribe = [{"channel": channel} for channel in channels]
        self.info = await self.call("connect", token=issue_token(self.user, SECRET), subscribe=subscribe)
        return self

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a command and return its ``result`` (an error reply fails the test; see :meth:`request`)."""
        reply = await self.request(op, **fields)
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a command and return its whole reply (``result`` or ``error``)."""
        assert self._socket is not None
        command_id = next(self._ids)
        future = self._replies[command_id] = asyncio.get_running_loop().create_future()
        await self._socket.send(Codec.JSON.encode({"id": command_id, "op": op, **fields}))
        async with asyncio.timeout(5 * UNIT):
            return await future

    async def _read(self) -> None:
        assert self._socket is not None
        with contextlib.suppress(ConnectionClosed):
            async for frame in self._socket:
                for message in Codec.JSON.split(frame):
                    if "id" in message:
                        future = self._replies.pop(message["id"], None)
                        if future is not None and not future.done():
                            future.set_result(message)
                    elif message.get("push") == "publication":
                        self.publications.append(message)
                    else:
                        self.events.append(message)

    def of(self, channel: str) -> list[dict[str, Any]]:
        return [p for p in self.publications if p["channel"] == channel]

    async def wait_for(self, channel: str, count: int, *, within: float = 10 * UNIT) -> list[dict[str, Any]]:
        await wait_until(lambda: len(self.of(channel)) >= count, timeout=within, what=f"{count} on {channel}")
        return self.of(channel)

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._reader is not None:
            await self._reader


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
