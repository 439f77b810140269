"""A bare Tidings protocol client on the ``websockets`` library: exact frames in, every message out.

The tests (and any asyncio tool) speak the wire protocol through it when they must see what
the server really sends: duplicates, ordering, the frames themselves, the close code. The
SDK (``tidings.client``) hides those on purpose. Frames are split with the server's own
``Codec.split``. It reads only when asked (``recv``, ``call``, ``closed``...), so a test can
stop reading to play a slow client, or :meth:`ProtocolClient.listen` in the background so
that ``history`` fills up by itself (``of``, ``events``, ``wait_for``).

(``loadtest/fastws.py`` is the benchmark's callback client, cheap enough for thousands of
connections; ``loadtest/wsclient.py`` is locust's, on gevent: neither can run this asyncio code.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close
from websockets.typing import Subprotocol

from tidings.server.gateway.protocol import Codec

__all__ = ["ProtocolClient"]

Message = dict[str, Any]


class ProtocolClient:
    """One WebSocket to a node. Replies to :meth:`call` are taken out; every other message is kept.

    ``timeout`` (seconds) is the default wait of every read.
    """

    def __init__(self, ws: ClientConnection, codec: Codec = Codec.JSON, *, timeout: float = 5.0) -> None:
        self.ws = ws
        self.codec = codec
        self.timeout = timeout
        self.inbox: deque[Message] = deque()  # messages not read yet by recv()
        self.history: list[Message] = []  # every message but call() replies, in arrival order
        self.frames = 0  # frames received
        self.info: Message = {}  # the connect result, after connect()
        self._ids = itertools.count(1)
        self._awaited: set[int] = set()
        self._replies: dict[int, Message] = {}
        self._listener: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self._closed: ConnectionClosed | None = None

    @classmethod
    async def open(
        cls, url: str, codec: Codec = Codec.JSON, *, timeout: float = 5.0, **options: Any
    ) -> ProtocolClient:
        """Open a WebSocket offering ``codec``'s subprotocol; ``options`` go to ``websockets.connect``."""
        options = {"max_size": None, "open_timeout": timeout, "close_timeout": timeout / 5, **options}
        ws = await connect(url, subprotocols=[Subprotocol(codec.value)], **options)
        return cls(ws, codec, timeout=timeout)

    @classmethod
    @contextlib.asynccontextmanager
    async def connecting(
        cls, url: str, codec: Codec = Codec.JSON, *, timeout: float = 5.0, **options: Any
    ) -> AsyncIterator[ProtocolClient]:
        """:meth:`open` for the duration of the block, then :meth:`close`."""
        client = await cls.open(url, codec, timeout=timeout, **options)
        try:
            yield client
        finally:
            await client.close()

    # --- sending ---------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Send one message as it is (its ``id`` is the caller's)."""
        await self.ws.send(self.codec.encode(message))

    async def call(self, op: str, **fields: Any) -> Message:
        """Send a command and return its whole reply (``result`` or ``error``); other messages stay kept."""
        command_id = next(self._ids)
        self._awaited.add(command_id)
        try:
            await self.send({"id": command_id, "op": op, **fields})
            await self._until(lambda: command_id in self._replies, self.timeout)
        finally:
            self._awaited.discard(command_id)
        return self._replies.pop(command_id)

    async def result(self, op: str, **fields: Any) -> Message:
        """:meth:`call` that must succeed: its ``result``."""
        reply = await self.call(op, **fields)
        assert "result" in reply, reply
        result: Message = reply["result"]
        return result

    async def connect(self, token: str, subscribe: list[Message] | None = None) -> Message:
        """``connect`` (subscribing ``subscribe``), which must succeed; its result is kept in ``info``."""
        self.info = await self.result(
            "connect", token=token, **({"subscribe": subscribe} if subscribe else {})
        )
        return self.info

    # --- receiving -------------------------------------------------------------------------------

    async def recv(self, within: float | None = None) -> Message:
        """The next message kept, whatever it is. Raises ConnectionClosed once the server closed."""
        await self._until(lambda: bool(self.inbox), self.timeout if within is None else within)
        return self.inbox.popleft()

    async def publications(self, count: int) -> list[Message]:
        """Read until ``count`` publication pushes (other messages read meanwhile are dropped)."""
        found: list[Message] = []
        while len(found) < count:
            message = await self.recv()
            if message.get("push") == "publication":
                found.append(message)
        return found

    async def closed(self, within: float | None = None) -> tuple[int | None, list[Message]]:
        """Read until the server closes; return its close code and the messages not read before."""
        try:
            await self._until(lambda: False, self.timeout if within is None else within)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        seen = list(self.inbox)
        self.inbox.clear()
        return code, seen

    @property
    def close_frame(self) -> Close | None:
        """The close frame the server sent (code and reason), once :meth:`closed` (or a read) saw it."""
        return self._closed.rcvd if self._closed is not None else None

    def listen(self) -> ProtocolClient:
        """Read in the background from now on: ``history`` fills up without anyone asking."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        return self

    def of(self, channel: str) -> list[Message]:
        """The publications of ``channel`` received so far, duplicates included."""
        return [m for m in self.history if m.get("push") == "publication" and m.get("channel") == channel]

    @property
    def events(self) -> list[Message]:
        """Every push received so far but publications (join, leave, unsubscribe, disconnect...)."""
        return [m for m in self.history if "push" in m and m["push"] != "publication"]

    async def wait_for(self, channel: str, count: int, *, within: float | None = None) -> list[Message]:
        """Until ``count`` publications of ``channel`` have arrived (by :meth:`listen` or this wait)."""
        await self._until(
            lambda: len(self.of(channel)) >= count, self.timeout * 2 if within is None else within
        )
        return self.of(channel)

    async def close(self) -> None:
        await self.ws.close()
        if self._listener is not None:
            await self._listener

    # --- the reading itself ----------------------------------------------------------------------

    async def _until(self, ready: Callable[[], bool], within: float) -> None:
        """Read (or, when listening, wait for the listener) until ``ready()``; TimeoutError after ``within``."""
        async with asyncio.timeout(within):
            while not ready():
                if self._closed is not None:
                    raise self._closed
                if self._listener is None:
                    await self._read_frame()
                else:
                    self._arrived.clear()
                    await self._arrived.wait()

    async def _read_frame(self) -> None:
        try:
            frame = await self.ws.recv()
        except ConnectionClosed as exc:
            self._closed = exc
            raise
        self.frames += 1
        for message in self.codec.split(frame):
            if isinstance(message, dict) and message.get("id") in self._awaited:
                self._replies[message["id"]] = message
            else:
                self.inbox.append(message)
                self.history.append(message)

    async def _listen(self) -> None:
        try:
            while True:
                await self._read_frame()
                self._arrived.set()
        except ConnectionClosed:
            self._arrived.set()
