"""One connection that sends queued Redis commands in order, as one pipeline per round trip.

DESIGN.md "Performance shape": publishing goes through one per-node publisher that
pipelines the Lua calls in order rather than each publish awaiting its own round
trip (+24 % under bursts). Callers queue a command and await its own reply; a
single task, alive only while something is queued, sends whatever is queued as
one write and reads the replies back in order.

Errors:
    BackplaneUnavailable
        the connection failed (refused, reset, or the round trip took longer than
        ``timeout``): every command of that
        round trip gets it. Such a command may or may not have run.
    redis.exceptions.ResponseError
        Redis answered that one command with an error (other commands are unaffected).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from tidings.server.cluster.backplane import BackplaneUnavailable
from tidings.server.cluster.backplane.resp import RespConnection

__all__ = ["SERVER_ID", "CommandPipeline", "Commands", "Script", "is_unavailable", "server_id_of"]

logger = logging.getLogger("tidings.backplane.redis")

# Replies that mean "the server cannot do it right now", not "the command is wrong".
_TEMPORARY_REPLIES = ("OOM", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis is unreachable or temporarily unable to serve (a 503)."""
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)):
        return True
    # redis-py strips the code from these replies' text, so they are told apart by class.
    if isinstance(exc, (ReadOnlyError, BusyLoadingError, TryAgainError, ClusterDownError)):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_TEMPORARY_REPLIES)


SERVER_ID: Any = object()
"""Put last in a command's arguments: replaced, when the command is written, by the ``run_id`` of the
server process on the other end of the connection (streams.py keeps epochs honest with it)."""


def server_id_of(info: bytes | str) -> bytes:
    """The ``run_id`` in an ``INFO server`` reply (b"" if there is none)."""
    text = info.decode() if isinstance(info, bytes) else info
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line[len("run_id:") :].strip().encode()
    return b""


class Script:
    """A Lua script called by its SHA1 (``EVALSHA``) and loaded on ``NOSCRIPT``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


@dataclass(slots=True)
class _Call:
    args: tuple[EncodableT, ...]
    script: Script | None
    future: asyncio.Future[Any]


class Commands(Protocol):
    """What streams.py needs: one server's CommandPipeline, or a cluster's (cluster_commands.py).

    ``call`` routes by its second argument (the key or shard channel), ``evalsha`` by its first key.
    """

    async def call(self, *args: EncodableT) -> Any: ...

    async def call_all(self, commands: Sequence[tuple[EncodableT, ...]]) -> list[Any]:
        """Each command as ``call`` runs it, all queued at once; replies in order, or the first error."""
        ...

    async def evalsha(self, script: Script, keys: list[str], args: list[EncodableT]) -> Any: ...

    async def close(self) -> None: ...


async def replies_of(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """The results of ``futures`` in order once all are done; the first error (in order) raised.

    Cancelled while waiting, it cancels those not done (a queued command is then not sent).
    """
    results: list[Any] = []
    error: Exception | None = None
    try:
        for future in futures:
            try:
                results.append(await future)
            except Exception as exc:  # retrieved here, so never logged as lost
                error = error or exc
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    if error is not None:
        raise error
    return results


class CommandPipeline:
    """Queued commands, sent in order over one dedicated connection.

    Guarantees:
      * Commands reach Redis in the order ``call``/``evalsha`` were called, so two
        publications of one caller keep their order.
      * Each caller gets its own reply; a ``NOSCRIPT`` reply loads the script and
        runs those calls again (they did not run the first time).
      * At most ``max_batch`` commands go in one round trip; a cancelled caller's
        command is not sent if it has not been sent yet.
      * A command whose last argument is :data:`SERVER_ID` is sent with the ``run_id`` of the
        server that runs it in its place, read on every (re)connect (only the last is looked at).
      * A ``READONLY`` reply (a primary demoted by a failover) drops the connection, so the next
        round trip connects anew (to the new primary when the connection locates it).
    """

    def __init__(
        self, connect: Callable[[], Awaitable[RespConnection]], *, timeout: float, max_batch: int = 512
    ) -> None:
        """``connect`` opens a new connection (resp.py) when there is none; ``timeout`` bounds each
        round trip as a whole (connecting included), so no reply needs a timer of its own.
        """
        self._connect = connect
        self._connection: RespConnection | None = None
        self._timeout = timeout
        self._max_batch = max_batch
        self._queue: list[_Call] = []
        self._server_id = b""
        # The first caller's loop, kept: on Python 3.11 get_running_loop() costs a getpid() each time.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def call(self, *args: EncodableT) -> Any:
        """Run one command; return its reply.

        Raises:
            BackplaneUnavailable: Redis could not be reached.
            ResponseError: Redis answered with an error.
        """
        return await self._enqueue(args, None)

    async def call_all(self, commands: Sequence[tuple[EncodableT, ...]]) -> list[Any]:
        """Run ``commands``, queued together (one round trip as a rule); their replies in order.

        No task per command (``asyncio.gather`` would make one each). Every reply is waited for;
        then the first error among them is raised (as for :meth:`call`).
        """
        return await replies_of([self._enqueue(command, None) for command in commands])

    async def evalsha(
        self, script: Script, keys: list[str], args: list[EncodableT], *, asking: bool = False
    ) -> Any:
        """Run ``script`` with ``keys`` and ``args``; return its reply (errors as for :meth:`call`).

        ``asking``: send ``ASKING`` right before it (a Redis Cluster slot being imported here).
        """
        if asking:
            self._enqueue_asking()
        return await self._enqueue(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    async def call_asking(self, *args: EncodableT) -> Any:
        """:meth:`call` preceded by ``ASKING`` on the same connection (Redis Cluster ``-ASK``)."""
        self._enqueue_asking()
        return await self._enqueue(args, None)

    def _enqueue_asking(self) -> None:
        # Queued synchronously right before the command, so it is the command before it on the wire.
        # Its own reply (OK, or an error the command's reply repeats) is read and dropped.
        self._enqueue(("ASKING",), None).add_done_callback(lambda f: f.cancelled() or f.exception())

    async def close(self) -> None:
        """Fail what is queued, stop the sender and close the connection. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail(self._queue, BackplaneUnavailable("the backplane is closed"))
        self._queue = []
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _enqueue(self, args: tuple[EncodableT, ...], script: Script | None) -> asyncio.Future[Any]:
        if self._closed:
            raise BackplaneUnavailable("the backplane is closed")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Call(args, script, future))
        if self._task is None:
            self._task = loop.create_task(self._send_queued())
        return future

    async def _send_queued(self) -> None:
        try:
            while self._queue:
                batch = [call for call in self._queue[: self._max_batch] if not call.future.done()]
                del self._queue[: self._max_batch]
                if batch:
                    await self._round_trip(batch)
        finally:
            self._task = None

    async def _round_trip(self, batch: list[_Call]) -> None:
        try:
            replies = await self._execute([call.args for call in batch])
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                # The script cache is empty (new or restarted server, SCRIPT FLUSH): load and run those again.
                scripts = {s.sha: s for s in (batch[i].script for i in missing) if s is not None}
                await self._execute([("SCRIPT", "LOAD", s.source) for s in scripts.values()])
                again = await self._execute([batch[i].args for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except Exception as exc:
            if is_unavailable(exc):
                self._fail(batch, BackplaneUnavailable(f"Redis unreachable: {exc}"), cause=exc)
            else:
                logger.error("a pipelined round trip failed: %r", exc)
                for call in batch:
                    if not call.future.done():
                        call.future.set_exception(exc)
            return
        except BaseException:
            self._fail(batch, BackplaneUnavailable("the backplane is closed"))
            raise
        if any(isinstance(reply, ReadOnlyError) for reply in replies):
            self._drop()
        for call, reply in zip(batch, replies, strict=True):
            if call.future.done():
                continue
            if not isinstance(reply, Exception):
                call.future.set_result(reply)
            elif is_unavailable(reply):
                self._fail([call], BackplaneUnavailable(f"Redis cannot serve: {reply}"), cause=reply)
            else:
                call.future.set_exception(reply)

    async def _execute(self, commands: list[tuple[EncodableT, ...]]) -> list[Any]:
        try:
            async with asyncio.timeout(self._timeout):  # one timer per round trip, not one per reply
                connection = self._connection
                if connection is None or connection.is_closed:
                    connection = self._connection = await self._connect()
                    self._server_id = server_id_of(await connection.call("INFO", "server"))
                server_id = self._server_id
                commands = [(*c[:-1], server_id) if c[-1] is SERVER_ID else c for c in commands]
                futures = connection.send(commands)
                await futures[-1]  # replies come in order: once the last is in, all are
            return [future.result() for future in futures]  # error replies are values, not raised
        except BaseException:
            # A cancelled or failed round trip leaves replies unread: never reuse the connection.
            self._drop()
            raise

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()

    @staticmethod
    def _fail(calls: list[_Call], error: BackplaneUnavailable, *, cause: BaseException | None = None) -> None:
        for call in calls:
            if not call.future.done():
                exc = BackplaneUnavailable(str(error))
                exc.__cause__ = cause
                call.future.set_exception(exc)
