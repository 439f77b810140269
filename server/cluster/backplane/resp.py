"""A Redis connection as an asyncio Protocol: the backplane's lean path to Redis.

Commands are packed by hiredis and written straight to the transport; replies are parsed by
``hiredis.Reader`` in ``data_received`` and handed on synchronously, in order: to the future of
the command they answer, or (a pub/sub link, where the server pushes) to ``on_push``. redis-py's
connection awaits a chain of coroutines per reply and per write; on the backplane's hot paths
(every publication a node sends or receives) that chain cost more than the rest of the path.

Error replies become redis-py's exception classes (``MovedError``, ``NoScriptError``, ...),
handed on as values, never raised inside ``data_received``; a lost connection fails every
command still waiting with ``ConnectionError``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.typing import EncodableT

from tidings.server.cluster.redis_target import Address

__all__ = ["Endpoint", "RespConnection", "open_resp"]


class _ReplyError(Exception):
    """What hiredis.Reader makes of an error reply (turned into redis-py's class at once)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect. ``locate``: asked for the address at each connect (Sentinel)."""

    address: Address | None = None
    path: str | None = None  # a unix socket instead of an address
    locate: Callable[[], Any] | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: ssl.SSLContext | None = None
    name: str | None = None  # CLIENT SETNAME


class RespConnection(asyncio.Protocol):
    """One connection. Use :func:`open_resp`; then :meth:`call`, :meth:`send` or :meth:`write`."""

    def __init__(self, on_push: Callable[[Any], None] | None = None) -> None:
        self.on_push = on_push
        self.transport: asyncio.Transport | None = None
        # Kept: on Python 3.11 asyncio.get_running_loop() costs a getpid() system call each time.
        self._loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self._reader = hiredis.Reader(replyError=_ReplyError)
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()

    @property
    def is_closed(self) -> bool:
        return self.lost.done()

    # --- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is a Transport, not a subclass

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if isinstance(reply, _ReplyError):
                    reply = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
                if self._waiting:
                    future = self._waiting.popleft()
                    if not future.done():
                        future.set_result(reply)
                elif self.on_push is not None:
                    self.on_push(reply)  # must not raise (the link catches what it calls)
        except hiredis.ProtocolError as exc:
            self._abort(RedisConnectionError(f"unreadable reply from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        error = RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}")
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
                future.exception()  # marked retrieved: see _abort
        if not self.lost.done():
            self.lost.set_result(None)

    # --- commands ------------------------------------------------------------------------------------

    def write(self, commands: Sequence[Sequence[EncodableT]]) -> None:
        """Write commands whose replies come as pushes (a pub/sub link). Raises ConnectionError if closed."""
        if self.transport is None or self.is_closed:
            raise RedisConnectionError("the Redis connection is closed")
        self.transport.write(b"".join([hiredis.pack_command(tuple(c)) for c in commands]))  # type: ignore[arg-type]

    def send(self, commands: Sequence[Sequence[EncodableT]]) -> list[asyncio.Future[Any]]:
        """Write commands; one future per reply, resolved in order (error replies as exception values)."""
        self.write(commands)
        create_future = self._loop.create_future
        futures = [create_future() for _ in commands]
        self._waiting.extend(futures)
        return futures

    async def call(self, *args: EncodableT) -> Any:
        """One command; its reply, or raise it if it is an error reply."""
        reply = await self.send([args])[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (a peer that stopped answering may never read a close)."""
        if self.transport is not None:
            self.transport.abort()

    def _abort(self, error: Exception) -> None:
        # A caller still waiting gets the error when it awaits; marked retrieved because a round
        # trip given up (timed out, cancelled) waits no more, and asyncio would log every such
        # future as "exception never retrieved" when it is collected.
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
                future.exception()
        if self.transport is not None:
            self.transport.abort()


async def open_resp(
    endpoint: Endpoint, *, timeout: float, on_push: Callable[[Any], None] | None = None
) -> RespConnection:
    """Connect, authenticate, select the database and name the connection, within ``timeout``.

    Raises:
        redis.exceptions.ConnectionError: unreachable, refused, or the handshake failed.
    """
    loop = asyncio.get_running_loop()
    protocol = RespConnection(on_push)
    try:
        async with asyncio.timeout(timeout):
            if endpoint.path is not None:
                await loop.create_unix_connection(lambda: protocol, endpoint.path)
            else:
                address = await endpoint.locate() if endpoint.locate is not None else endpoint.address
                assert address is not None
                await loop.create_connection(lambda: protocol, address[0], address[1], ssl=endpoint.tls)
            setup: list[tuple[EncodableT, ...]] = []
            if endpoint.password is not None:
                setup.append(("AUTH", *([endpoint.username] if endpoint.username else []), endpoint.password))
            if endpoint.db:
                setup.append(("SELECT", endpoint.db))
            if endpoint.name:
                setup.append(("CLIENT", "SETNAME", endpoint.name))
            if setup:
                for reply in await asyncio.gather(*protocol.send(setup)):
                    if isinstance(reply, Exception):
                        raise RedisConnectionError(f"Redis refused the connection's setup: {reply}")
    except (OSError, TimeoutError) as exc:
        protocol.close()
        raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from exc
    except BaseException:
        protocol.close()
        raise
    return protocol
