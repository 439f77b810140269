"""One WebSocket connection: the only code that awaits the socket.

A reader loop (the ASGI task itself) receives frames, checks them with the pure
session and hands them to ``commands``. Outgoing frames go through a bounded
outbox counted in bytes. Queuing the first frame schedules one flush callback
(``call_soon``), which sends everything queued by then as ONE frame (JSON joined
by ``\\n``, MessagePack back to back), written straight to the transport
(wire.py). Only when the socket is paused does a writer task wait for it. No
timer adds delay: under bursts this coalesces, at low rates it costs nothing. An
idle connection holds no task but its reader (DESIGN.md "Performance shape").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from tidings.server.cluster.backplane import Publication
from tidings.server.gateway.limits import CommandLimiter, Verdict
from tidings.server.gateway.protocol import (
    CLOSE_PROTOCOL_VIOLATION,
    CLOSE_RATE_LIMITED,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHENTICATED,
    ERR_RATE_LIMITED,
    ERR_UNAUTHENTICATED,
    Codec,
    Disconnect,
    Frame,
    ProtocolError,
    StreamPosition,
    decode_command,
    error_reply,
)
from tidings.server.gateway.session import Session, State
from tidings.server.logs import bind_connection
from tidings.server.transport.frames import attach, release_handshake, wire_bytes

if TYPE_CHECKING:
    from tidings.server.gateway.commands import CommandRunner

__all__ = ["Connection", "Flusher", "InFlight", "serve_websocket"]

logger = logging.getLogger("tidings.connection")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CLOSE_GRACE = 1.0  # seconds to get a close frame out before the transport is aborted


class Flusher:
    """Flushes, once per event-loop turn, every connection that queued something during that turn.

    One per node (one event loop): a single ``call_soon`` for a whole fan-out instead of one per
    subscriber.
    """

    __slots__ = ("_dirty", "_loop", "_pending")

    def __init__(self) -> None:
        self._dirty: list[Connection] = []
        self._pending = False
        # Kept: asyncio.get_running_loop() costs a getpid() system call on every call.
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, connection: Connection) -> None:
        self._dirty.append(connection)
        if not self._pending:
            self._pending = True
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._pending = False
        for connection in dirty:
            connection._flush()


class InFlight:
    """Tasks a connection's reader started and did not wait for (pipelined publishes), oldest first.

    Guarantees: ``admit(limit)`` returns once fewer than ``limit`` are unfinished,
    ``settle()`` once none is; neither cancels them. An idle connection holds no list.
    """

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] | None = None

    def add(self, task: asyncio.Task[None]) -> None:
        if self._tasks is None:
            self._tasks = []
        self._tasks.append(task)

    def _unfinished(self) -> list[asyncio.Task[None]] | None:
        tasks = self._tasks
        if tasks is not None:
            while tasks and tasks[0].done():  # they finish in the order they started, as a rule
                del tasks[0]
            if not tasks:
                self._tasks = tasks = None
        return tasks

    async def admit(self, limit: int) -> None:
        while (tasks := self._unfinished()) is not None and len(tasks) >= limit:
            await asyncio.wait([tasks[0]])

    async def settle(self) -> None:
        while (tasks := self._unfinished()) is not None:
            await asyncio.wait(list(tasks))


class Connection:
    """The sending half of a client connection, as the hub and the command runner see it.

    Guarantees:
      * ``send``/``deliver`` never await and never raise for a closed connection.
      * At most ``outbox_size`` bytes wait in the outbox; one more closes the
        connection with 4008 ("too slow"); memory never grows without bound.
      * While a channel is being (re)subscribed, its live publications are held
        back and released after the subscribe reply, without those the reply
        already carried (``hold``/``release``): no gap and no duplicate.
    """

    __slots__ = (
        "__weakref__",
        "_asgi_send",
        "_closing",
        "_direct",
        "_floor",
        "_flush_scheduled",
        "_flusher",
        "_held",
        "_outbox",
        "_outbox_bytes",
        "_outbox_size",
        "_writer",
        "client_id",
        "close_code",
        "closed",
        "codec",
        "dropped_frames",
        "limiter",
        "publishes",
        "session",
    )

    def __init__(
        self,
        client_id: str,
        codec: Codec,
        asgi_send: Send,
        *,
        outbox_size: int,
        session: Session,
        flusher: Flusher | None = None,
    ) -> None:
        self.client_id = client_id
        self.codec = codec
        self.session = session
        self.closed = False
        self._asgi_send = asgi_send
        self._outbox: list[Frame] = []
        self._outbox_bytes = 0
        self._outbox_size = outbox_size
        self._writer: asyncio.Task[None] | None = None
        self._direct = attach(asgi_send)  # the fast write path (wire.py), or None: ASGI send only
        self._flush_scheduled = False
        self._flusher = flusher if flusher is not None else Flusher()
        self._held: dict[str, list[tuple[Publication, Frame]]] | None = None
        # Per channel, the highest offset already sent since its (re)subscribe. A node that is repairing
        # a pub/sub gap may still hand on older publications afterwards; they are dropped here. The
        # entry goes away with the first newer publication, so steady state costs one None check.
        self._floor: dict[str, tuple[str, int]] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.limiter: CommandLimiter | None = None  # set by serve_websocket; None: no rate limit
        self.publishes = InFlight()  # pipelined publishes awaiting their reply (CommandRunner.submit)
        self.close_code: int | None = None  # the code the server closed with (for /metrics)
        self.dropped_frames = 0  # frames never sent because of a close (for /metrics)

    # --- outgoing ----------------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Encode and queue one reply or push."""
        self.send_frame(self.codec.encode(message))

    def send_frame(self, frame: Frame) -> None:
        if self.closed:
            return
        size = len(frame)
        if self._outbox_bytes + size > self._outbox_size:
            self.dropped_frames += 1
            self.close(CLOSE_TOO_SLOW, "too slow: outbox full")
            return
        self._outbox.append(frame)
        self._outbox_bytes += size
        if not self._flush_scheduled and self._writer is None:
            # Flush once the current burst has been queued: everything queued until then leaves as
            # one frame. Not a task per wake-up (several microseconds each): the node's Flusher runs
            # one callback per event-loop turn for every connection that has something to send.
            self._flush_scheduled = True
            self._flusher.add(self)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or not self._outbox or self._writer is not None:
            return
        frames = self._outbox
        frame = frames[0] if len(frames) == 1 else self.codec.join(frames)
        if self._direct is not None and self._direct.try_write(wire_bytes(frame)):
            self._outbox, self._outbox_bytes = [], 0
            return
        # The socket is paused (the peer reads slowly) or closing: wait for it in a writer task.
        self._writer = asyncio.get_running_loop().create_task(self._drain())

    def deliver(self, publication: Publication, frame: Frame) -> None:
        """A publication from the hub; held back while its channel is being subscribed."""
        if self._held is not None:
            held = self._held.get(publication.channel)
            if held is not None:
                held.append((publication, frame))
                return
        if self._floor is not None and publication.offset is not None:
            floor = self._floor.get(publication.channel)
            if floor is not None:
                if publication.epoch == floor[0] and publication.offset <= floor[1]:
                    return  # already sent (in a subscribe reply or released after it)
                del self._floor[publication.channel]
                if not self._floor:
                    self._floor = None
        self.send_frame(frame)

    def hold(self, channel: str) -> None:
        """Hold back live publications of ``channel`` until ``release``."""
        if self._held is None:
            self._held = {}
        self._held[channel] = []

    def release(self, channel: str, *, after: StreamPosition | None) -> None:
        """Send what was held for ``channel``, skipping offsets up to ``after`` (already sent in a reply).

        ``after`` None drops what was held (the subscription failed).
        """
        if self._held is None:
            return
        held = self._held.pop(channel, [])
        if not self._held:
            self._held = None
        if after is None:
            return
        floor = after.offset
        for publication, frame in held:
            if publication.offset is None:
                self.send_frame(frame)
            elif publication.epoch != after.epoch or publication.offset > floor:
                floor = max(floor, publication.offset) if publication.epoch == after.epoch else floor
                self.send_frame(frame)
        if self._floor is None:
            self._floor = {}
        self._floor[channel] = (after.epoch, floor)

    async def _drain(self) -> None:
        key = "text" if self.codec is Codec.JSON else "bytes"
        try:
            while self._outbox and not self.closed:
                frames, self._outbox, self._outbox_bytes = self._outbox, [], 0
                await self._asgi_send({"type": "websocket.send", key: self.codec.join(frames)})
        except (OSError, RuntimeError, asyncio.CancelledError):
            # The peer went away (uvicorn raises ClientDisconnected, an OSError) or we were cancelled.
            self.closed = True
        finally:
            self._writer = None

    def close(self, code: int, reason: str) -> None:
        """Tell the client why (a ``disconnect`` push) and close the socket; never awaits."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.session.close()
        self.dropped_frames += len(self._outbox)
        self._outbox.clear()
        self._outbox_bytes = 0
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
        self._closing = asyncio.get_running_loop().create_task(self._send_close(code, reason))

    async def wait_closed(self) -> None:
        """Wait until the close frame is out (or the grace period is over).

        The ASGI app must not return before: uvicorn then drops the transport and
        the client sees 1006 instead of the close code that carries its reconnect policy.
        """
        if self._closing is not None:
            await self._closing

    async def _send_close(self, code: int, reason: str) -> None:
        disconnect = Disconnect(code, reason)
        key = "text" if self.codec is Codec.JSON else "bytes"
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                await self._asgi_send({"type": "websocket.send", key: self.codec.encode(disconnect.push())})
                await self._asgi_send({"type": "websocket.close", "code": code, "reason": disconnect.reason})
        except TimeoutError:  # before OSError, of which it is a subclass
            self._abort_transport()
        except (OSError, RuntimeError):
            pass  # already gone

    def _abort_transport(self) -> None:
        # A client that does not read cannot take a close frame either.
        if self._direct is not None:
            self._direct.abort()
            return
        # Minor layering violation: uvicorn's ASGI send is a bound method of its protocol object.
        protocol = getattr(self._asgi_send, "__self__", None)
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.abort()


async def serve_websocket(scope: Scope, receive: Receive, send: Send, runner: CommandRunner) -> None:
    """Run one WebSocket connection from handshake to cleanup (an ASGI app body)."""
    settings = runner.settings
    if not runner.origin_allowed(scope):
        await send({"type": "websocket.close", "code": 1008})  # before accept: an HTTP 403
        return
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    offered = scope.get("subprotocols") or []
    codec = Codec.negotiate(offered)
    # RFC 6455 4.2.2: the server may only select a subprotocol the client offered.
    await send({"type": "websocket.accept", "subprotocol": codec.value if codec.value in offered else None})
    release_handshake(send)
    # What uvicorn's scope keeps of the handshake (headers, a copy of the lifespan state) is read only
    # before this point; for an idle connection's whole life it would be dead weight.
    scope["headers"] = []
    scope.pop("state", None)

    client_id = runner.new_client_id()
    bind_connection(client_id)  # every log record of this task carries the connection id (logs.py)
    session = Session(client_id, max_channels=settings.max_channels)
    connection = Connection(
        client_id, codec, send, outbox_size=settings.outbox_size, session=session, flusher=runner.flusher
    )
    connection.limiter = CommandLimiter(settings.command_rate, settings.command_burst, now=time.monotonic())
    expiry: asyncio.TimerHandle | None = None
    try:
        async with asyncio.timeout(settings.connect_timeout):
            # Until a connect succeeds, the deadline holds: a connect answered with an error reply
            # (500, 503) may be retried, but an unauthenticated socket never outlives connect_timeout.
            while session.state is State.CONNECTING:
                message = await receive()
                if not await _handle_frame(message, connection, runner):
                    return
        if session.state is State.OPEN and session.principal is not None:
            expiry = asyncio.get_running_loop().call_later(
                max(0.0, session.principal.expires_at - time.time()),
                connection.close,
                CLOSE_UNAUTHENTICATED,
                "token expired",
            )
        while not connection.closed:
            message = await receive()
            if not await _handle_frame(message, connection, runner):
                return
    except TimeoutError:
        connection.close(CLOSE_PROTOCOL_VIOLATION, f"no connect within {settings.connect_timeout:g} s")
    finally:
        if expiry is not None:
            expiry.cancel()
        await runner.disconnected(connection)
        await connection.wait_closed()
        await connection.publishes.settle()  # already queued on the backplane: they finish either way


async def _handle_frame(message: Message, connection: Connection, runner: CommandRunner) -> bool:
    """Handle one ASGI event; False once the connection is over."""
    if message["type"] == "websocket.disconnect":
        connection.closed = True
        return False
    frame = message.get("text")
    if frame is None:
        frame = message.get("bytes")
    if frame is None or connection.closed:
        return not connection.closed
    # Every frame counts against the rate, valid or not: 429 while over it, close 4029 if that goes on.
    verdict = connection.limiter.check(time.monotonic()) if connection.limiter else Verdict.ALLOW
    if verdict is Verdict.CLOSE:
        connection.close(CLOSE_RATE_LIMITED, "rate limited: too many commands")
        return False
    try:
        command = decode_command(frame, connection.codec, max_size=runner.settings.max_message_size)
        connection.session.check(command)
    except ProtocolError as exc:
        if exc.close_code is None and connection.session.state is State.CONNECTING:
            # Nothing but a valid connect opens a session: a bad first command ends the connection.
            exc.close_code = (
                CLOSE_UNAUTHENTICATED if exc.code == ERR_UNAUTHENTICATED else CLOSE_PROTOCOL_VIOLATION
            )
        if exc.close_code is not None:
            connection.close(exc.close_code, exc.message)
            return False
        await connection.publishes.settle()  # replies keep command order
        connection.send(error_reply(exc.id or 0, exc.code, exc.message))
        return True
    if verdict is Verdict.REJECT:
        runner.metrics.rate_limited += 1
        await connection.publishes.settle()
        connection.send(error_reply(command.id, ERR_RATE_LIMITED, "rate limited: slow down", temporary=True))
        return True
    await runner.submit(connection, command)
    return not connection.closed
