"""The Python WebSocket client: calls, pushes, reconnect and recovery.

Guarantees:
  * Each publication of a subscribed channel is handed to the user once, in
    offset order, across reconnects to any node: on reconnect every channel is
    resubscribed with ``since`` and publications at or below the last seen
    offset are dropped.
  * When recovery is impossible (epoch changed, window exceeded) a
    ``{"push": "unrecovered", "channel": ...}`` event says so; the user reloads.
  * Close codes 4500-4999 stop the client (``ConnectionClosed``); any other loss
    of the socket reconnects with exponential backoff and full jitter, cycling
    through the node URLs.

Errors:
    CallError: the server answered a command with an error.
    ConnectionClosed: the connection ended for good (terminal code or ``close()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WebSocketClosed
from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from tidings.server.gateway.protocol import Codec, StreamPosition, close_reconnects

__all__ = ["CallError", "Connection", "ConnectionClosed"]

logger = logging.getLogger("tidings.client")

TokenSource = str | Callable[[], Awaitable[str]]


class CallError(Exception):
    """An error reply. ``temporary`` means the same call may succeed later (e.g. 503)."""

    def __init__(self, code: int, message: str, temporary: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.temporary = temporary


class ConnectionClosed(Exception):
    """The connection is over: closed by the user, or by the server with a terminal code."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed ({code}): {reason}")
        self.code = code
        self.reason = reason


class Connection:
    """A Tidings client connection.

    Args:
        urls: one load-balancer URL or several node URLs (``ws://host:port/ws``).
        token: a JWT, or an async callable returning a fresh one for each (re)connect.
        codec: ``"json"`` or ``"msgpack"``.
        reconnect: reconnect after losing the socket (default True).
        min_backoff, max_backoff: seconds; the delay before attempt n is uniform in
            [0, min(max_backoff, min_backoff * 2**n)] ("full jitter").
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        token: TokenSource,
        *,
        codec: str = "json",
        reconnect: bool = True,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        call_timeout: float = 10.0,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("at least one URL is needed")
        self._token = token
        self.codec = Codec.MSGPACK if codec == "msgpack" else Codec.JSON
        self.reconnect = reconnect
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.call_timeout = call_timeout
        self.positions: dict[str, StreamPosition] = {}  # last publication seen per subscribed channel
        self.channels: set[str] = set()  # channels to resubscribe after a reconnect
        self.info: dict[str, Any] = {}  # the last connect result (client, user, node, ...)
        self.reconnects = 0
        self._pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._subscribing: dict[int, str] = {}  # command id → channel of subscribe calls in flight
        self._ids = itertools.count(1)
        self._url_index = 0
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closed: ConnectionClosed | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def connect(self, subscribe: Sequence[str] = ()) -> dict[str, Any]:
        """Open the connection (trying each URL once), subscribe to ``subscribe``, and start reading.

        Returns:
            the ``connect`` result.

        Raises:
            ConnectionClosed: the server refused the token (4501) or another terminal code.
            OSError: no URL could be reached.
        """
        self.channels.update(subscribe)
        last_error: Exception | None = None
        for _ in range(len(self.urls)):
            try:
                await self._open()
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                last_error = exc
                self._url_index += 1
                continue
            self._reader = asyncio.get_running_loop().create_task(self._read_forever())
            return self.info
        raise OSError(f"no Tidings node reachable: {last_error!r}")

    async def close(self) -> None:
        """Close for good; pending calls fail with ConnectionClosed."""
        self._closed = ConnectionClosed(1000, "closed by the client")
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._socket is not None:
            await self._socket.close()
        self._fail_pending(self._closed)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return self.urls[self._url_index % len(self.urls)]

    @property
    def node(self) -> str | None:
        node = self.info.get("node")
        return node if isinstance(node, str) else None

    async def _open(self) -> None:
        token = self._token if isinstance(self._token, str) else await self._token()
        socket = await asyncio.wait_for(
            connect(self.url, subprotocols=[Subprotocol(self.codec.value)], max_size=None, open_timeout=5),
            timeout=10,
        )
        subscribe = [
            {
                "channel": channel,
                **({"since": self.positions[channel].encode()} if channel in self.positions else {}),
            }
            for channel in sorted(self.channels)
        ]
        command_id = next(self._ids)
        await socket.send(
            self.codec.encode({"id": command_id, "op": "connect", "token": token, "subscribe": subscribe})
        )
        # Read until the connect reply. Messages are taken strictly in order: publications that follow
        # the reply in the same frame must be seen after the reply's positions are applied.
        reply: dict[str, Any] | None = None
        async with asyncio.timeout(self.call_timeout):
            while reply is None:
                try:
                    frame = await socket.recv()
                except WebSocketClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else 1006
                    reason = exc.rcvd.reason if exc.rcvd else "connection lost"
                    if not close_reconnects(code):
                        self._closed = ConnectionClosed(code, reason)
                        raise self._closed from exc
                    raise OSError(f"closed during connect ({code})") from exc
                for message in self.codec.split(frame):
                    if reply is None and message.get("id") == command_id:
                        reply = message
                        if "error" in reply:
                            await socket.close()
                            error = reply["error"]
                            raise CallError(
                                error.get("code", 500),
                                error.get("message", ""),
                                error.get("temporary", False),
                            )
                        self._socket = socket
                        self.info = reply["result"]
                        for channel, state in self.info.get("channels", {}).items():
                            self._apply_subscription(channel, state)
                    else:
                        self._handle(message)
        self._connected.set()

    def _apply_subscription(self, channel: str, state: dict[str, Any]) -> None:
        """Take a subscribe result (or a channel of a connect result) into account."""
        if "error" in state:
            self.channels.discard(channel)
            self._pushes.put_nowait({"push": "subscribe_error", "channel": channel, "error": state["error"]})
            return
        self.channels.add(channel)
        top = StreamPosition(state["epoch"], state["offset"])
        for publication in state.get("publications", []):
            self._handle({"push": "publication", **publication})
        if state.get("recovered") is False:
            self._pushes.put_nowait({"push": "unrecovered", "channel": channel})
        known = self.positions.get(channel)
        if known is None or known.epoch != top.epoch or known.offset < top.offset:
            self.positions[channel] = top  # start (again) at the top; never move backwards

    async def _read_forever(self) -> None:
        attempt = 0
        while self._closed is None:
            assert self._socket is not None
            try:
                async for frame in self._socket:
                    for message in self.codec.split(frame):
                        self._handle(message)
                code, reason = 1000, "closed"
                if self._socket.close_code is not None:
                    code, reason = self._socket.close_code, self._socket.close_reason or ""
            except WebSocketClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                reason = exc.rcvd.reason if exc.rcvd else "connection lost"
            self._connected.clear()
            self._fail_pending(CallError(503, "connection lost, retry", temporary=True))
            if not close_reconnects(code) or not self.reconnect:
                self._closed = ConnectionClosed(code, reason)
                self._pushes.put_nowait({"push": "closed", "code": code, "reason": reason})
                return
            self._pushes.put_nowait({"push": "reconnecting", "code": code})
            while self._closed is None:
                delay = random.uniform(0, min(self.max_backoff, self.min_backoff * 2**attempt))
                await asyncio.sleep(delay)
                attempt += 1
                self._url_index += 1
                try:
                    await self._open()
                except ConnectionClosed as exc:
                    self._pushes.put_nowait({"push": "closed", "code": exc.code, "reason": exc.reason})
                    return
                except (OSError, InvalidHandshake, TimeoutError, CallError) as exc:
                    logger.debug("reconnect to %s failed: %r", self.url, exc)
                    continue
                self.reconnects += 1
                attempt = 0
                self._pushes.put_nowait({"push": "reconnected", "node": self.node})
                break

    def _handle(self, message: dict[str, Any]) -> None:
        command_id = message.get("id")
        if command_id is not None:
            channel = self._subscribing.pop(command_id, None)
            if channel is not None and "result" in message:
                # Applied here, in frame order, so recovered publications precede later live ones.
                self._apply_subscription(channel, message["result"])
            future = self._pending.pop(command_id, None)
            if future is not None and not future.done():
                future.set_result(message)
            return
        if message.get("push") == "publication" and "offset" in message:
            channel = message["channel"]
            known = self.positions.get(channel)
            if known is not None and known.epoch == message["epoch"] and message["offset"] <= known.offset:
                return  # already seen (recovered and live overlap)
            self.positions[channel] = StreamPosition(message["epoch"], message["offset"])
        self._pushes.put_nowait(message)

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    # --- calls -------------------------------------------------------------------------------------

    async def call(self, op: str, *, _subscribing: str | None = None, **fields: Any) -> dict[str, Any]:
        """Send one command and wait for its reply.

        Raises:
            CallError: an error reply, or 503 (temporary) if the socket dropped meanwhile.
            ConnectionClosed: the connection is over.
        """
        if self._closed is not None:
            raise self._closed
        await asyncio.wait_for(self._connected.wait(), self.call_timeout)
        assert self._socket is not None
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        if _subscribing is not None:
            self._subscribing[command_id] = _subscribing
        try:
            await self._socket.send(self.codec.encode({"id": command_id, "op": op, **fields}))
        except WebSocketClosed as exc:
            self._pending.pop(command_id, None)
            raise CallError(503, "connection lost, retry", temporary=True) from exc
        reply = await asyncio.wait_for(future, self.call_timeout)
        if "error" in reply:
            error = reply["error"]
            raise CallError(error.get("code", 500), error.get("message", ""), error.get("temporary", False))
        result: dict[str, Any] = reply["result"]
        return result

    async def subscribe(self, channel: str, *, since: StreamPosition | None = None) -> dict[str, Any]:
        """Subscribe; with ``since`` the result carries ``recovered`` and the missed publications (also pushed)."""
        fields: dict[str, Any] = {"channel": channel}
        if since is not None:
            fields["since"] = since.encode()
            self.positions[channel] = since
        return await self.call("subscribe", _subscribing=channel, **fields)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        self.positions.pop(channel, None)
        await self.call("unsubscribe", channel=channel)

    async def publish(self, channel: str, data: Any, *, ephemeral: bool = False) -> dict[str, Any]:
        fields: dict[str, Any] = {"channel": channel, "data": data}
        if ephemeral:
            fields["ephemeral"] = True
        return await self.call("publish", **fields)

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, limit: int = 100, reverse: bool = False
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"channel": channel, "limit": limit, "reverse": reverse}
        if since is not None:
            fields["since"] = since.encode()
        return await self.call("history", **fields)

    async def presence(self, channel: str) -> list[dict[str, Any]]:
        result = await self.call("presence", channel=channel)
        members: list[dict[str, Any]] = result["members"]
        return members

    async def ping(self) -> None:
        await self.call("ping")

    # --- pushes ------------------------------------------------------------------------------------

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """The next push (publication, join, leave, notification, and client events such as reconnected).

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
        """
        if timeout is None:
            return await self._pushes.get()
        async with asyncio.timeout(timeout):
            return await self._pushes.get()

    async def publications(
        self, channel: str | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """The next publication push (of ``channel`` if given), skipping other pushes."""
        while True:
            push = await self.recv(timeout)
            if push.get("push") == "publication" and (channel is None or push["channel"] == channel):
                return push
