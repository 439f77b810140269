"""One WebSocket connection: the only code that awaits the socket.

A reader loop (the ASGI task itself) receives frames, asks the pure session what
to do with each (``Session.receive_frame``) and does it: close, send an error
reply, or hand the command to the node's :class:`CommandHandler` (``commands``).
What the connections of a node share comes in one explicit :class:`Gateway`.
Outgoing frames go through a bounded
outbox counted in bytes. Queuing the first frame schedules one flush callback
(``call_soon``), which sends everything queued by then as ONE frame (JSON joined
by ``\\n``, MessagePack back to back), written straight to the transport
(wire.py). Only when the socket is paused does a writer task wait for it. No
timer adds delay: under bursts this coalesces, at low rates it costs nothing. An
idle connection holds no task but its reader (DESIGN.md "Performance shape").
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from tidings.server.cluster.backplane import Publication
from tidings.server.config import Settings
from tidings.server.gateway.client_commands import Command
from tidings.server.gateway.limits import CommandLimiter
from tidings.server.gateway.origins import origin_allowed
from tidings.server.gateway.protocol import (
    CLOSE_PROTOCOL_VIOLATION,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHENTICATED,
    ERR_RATE_LIMITED,
    Codec,
    Disconnect,
    Frame,
    StreamPosition,
)
from tidings.server.gateway.session import ChannelPositions, Close, Refuse, Session, State
from tidings.server.logs import bind_connection
from tidings.server.transport.frames import attach, release_handshake, wire_bytes

__all__ = [
    "CommandHandler",
    "Connection",
    "Flusher",
    "Gateway",
    "GatewayMetrics",
    "InFlight",
    "serve_websocket",
]

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
        already carried (``hold``/``release``; the rule is ``session.ChannelPositions``):
        no gap and no duplicate.
    """

    __slots__ = (
        "__weakref__",
        "_asgi_send",
        "_closing",
        "_direct",
        "_flush_scheduled",
        "_flusher",
        "_outbox",
        "_outbox_bytes",
        "_outbox_size",
        "_positions",
        "_writer",
        "client_id",
        "close_code",
        "closed",
        "codec",
        "dropped_frames",
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
        # Held publications and per-channel floors around (re)subscribes; None while there are none,
        # so steady state costs one None check per delivery.
        self._positions: ChannelPositions | None = None
        self._closing: asyncio.Task[None] | None = None
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
        positions = self._positions
        if positions is not None:
            admitted = positions.admit(publication, frame)
            if positions.idle:
                self._positions = None
            if not admitted:
                return
        self.send_frame(frame)

    def hold(self, channel: str) -> None:
        """Hold back live publications of ``channel`` until ``release``."""
        if self._positions is None:
            self._positions = ChannelPositions()
        self._positions.hold(channel)

    def release(self, channel: str, *, after: StreamPosition | None) -> None:
        """Send what was held for ``channel``, skipping offsets up to ``after`` (already sent in a reply).

        ``after`` None drops what was held (the subscription failed).
        """
        positions = self._positions
        if positions is None:
            return
        for frame in positions.release(channel, after=after):
            self.send_frame(frame)
        if positions.idle:
            self._positions = None

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


class CommandHandler(Protocol):
    """What the driver hands the commands the session let through to (``commands.CommandRunner``)."""

    async def submit(self, connection: Connection, command: Command) -> None:
        """Take the next command of ``connection``, in arrival order; queue its reply."""

    async def disconnected(self, connection: Connection) -> None:
        """Clean up after ``connection`` ended, however it ended."""


class GatewayMetrics(Protocol):
    """The event counters the driver keeps (``http.metrics.NodeMetrics``)."""

    rate_limited: int


class Gateway:
    """What the connections of one node share, passed to :func:`serve_websocket` explicitly.

    Args:
        settings: limits, timeouts and the origin rules of the node.
        handler: carries out commands (``commands.CommandRunner``).
        metrics: counts commands answered 429.
    """

    __slots__ = (
        "_client_counter",
        "_client_prefix",
        "_trusted_hosts",
        "flusher",
        "handler",
        "metrics",
        "settings",
    )

    def __init__(self, settings: Settings, handler: CommandHandler, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self._trusted_hosts = settings.trusted_hosts()  # parsed once: checked on every handshake
        self.handler = handler
        self.metrics = metrics
        self.flusher = Flusher()  # one flush callback per loop turn for all of this node's connections
        self._client_prefix = f"{secrets.token_hex(3)}"
        self._client_counter = itertools.count(1)

    def new_client_id(self) -> str:
        """A cluster-unique connection id (node-unique prefix plus a counter)."""
        return f"{self._client_prefix}{next(self._client_counter):x}"

    def origin_allowed(self, scope: Scope) -> bool:
        """Cross-site WebSocket hijacking guard: a browser's Origin must be allowed (origins.py)."""
        origin = dict(scope.get("headers") or []).get(b"origin")
        return origin_allowed(
            None if origin is None else origin.decode("latin-1"),
            allowed_origins=self.settings.allowed_origins,
            allowed_hosts=self._trusted_hosts,
        )

    def new_connection(self, codec: Codec, send: Send) -> Connection:
        """A connection for an accepted socket, with its session and command limiter."""
        settings = self.settings
        client_id = self.new_client_id()
        limiter = CommandLimiter(settings.command_rate, settings.command_burst, now=time.monotonic())
        session = Session(
            client_id,
            max_channels=settings.max_channels,
            codec=codec,
            max_size=settings.max_message_size,
            limiter=limiter,
        )
        return Connection(
            client_id, codec, send, outbox_size=settings.outbox_size, session=session, flusher=self.flusher
        )


async def serve_websocket(
    scope: Scope,
    receive: Receive,
    send: Send,
    gateway: Gateway,
    *,
    connected: Callable[[], None] = lambda: None,
    ended: Callable[[], None] = lambda: None,
) -> None:
    # Long: one coroutine for the connection's whole life, not a wrapper and a body: an idle
    # connection is mostly its suspended frames, and each level costs memory per connection.
    """Run one WebSocket connection from handshake to cleanup (an ASGI app body).

    ``connected`` is called once, when the connect is answered or the socket ends before that;
    ``ended`` once, last, when this coroutine ends however it ends (it has started: see admission.py).
    """
    handshaking = True
    try:
        settings = gateway.settings
        if not gateway.origin_allowed(scope):
            await send({"type": "websocket.close", "code": 1008})  # before accept: an HTTP 403
            return
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or []
        codec = Codec.negotiate(offered)
        # RFC 6455 4.2.2: the server may only select a subprotocol the client offered.
        await send(
            {"type": "websocket.accept", "subprotocol": codec.value if codec.value in offered else None}
        )
        release_handshake(send)
        # What uvicorn's scope keeps of the handshake (headers, a copy of the lifespan state) is read only
        # before this point; for an idle connection's whole life it would be dead weight.
        scope["headers"] = []
        scope.pop("state", None)

        connection = gateway.new_connection(codec, send)
        bind_connection(
            connection.client_id
        )  # every log record of this task carries the connection id (logs.py)
        session = connection.session
        expiry: asyncio.TimerHandle | None = None
        try:
            # Until a connect succeeds, the deadline holds for reading the next frame: a connect answered
            # with an error reply (500, 503) may be retried, but an unauthenticated socket never outlives
            # connect_timeout. A connect being carried out is not cut by it: on a node slowed by a storm
            # that would close a well-behaved client with 4500 and cancel its connect half way.
            deadline = asyncio.get_running_loop().time() + settings.connect_timeout
            while session.state is State.CONNECTING:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
                if not await _handle_frame(message, connection, gateway):
                    return
            handshaking = False
            connected()
            if session.state is State.OPEN and session.principal is not None:
                expiry = asyncio.get_running_loop().call_later(
                    max(0.0, session.principal.expires_at - time.time()),
                    connection.close,
                    CLOSE_UNAUTHENTICATED,
                    "token expired",
                )
            while not connection.closed:
                message = await receive()
                if not await _handle_frame(message, connection, gateway):
                    return
        except TimeoutError:
            connection.close(CLOSE_PROTOCOL_VIOLATION, f"no connect within {settings.connect_timeout:g} s")
        finally:
            if expiry is not None:
                expiry.cancel()
            await gateway.handler.disconnected(connection)
            await connection.wait_closed()
            await connection.publishes.settle()  # already queued on the backplane: they finish either way
    finally:
        try:
            if handshaking:
                connected()
        finally:
            ended()


async def _handle_frame(message: Message, connection: Connection, gateway: Gateway) -> bool:
    """Handle one ASGI event: do what the session says of its frame. False once the connection is over."""
    if message["type"] == "websocket.disconnect":
        connection.closed = True
        return False
    frame = message.get("text")
    if frame is None:
        frame = message.get("bytes")
    if frame is None or connection.closed:
        return not connection.closed
    action = connection.session.receive_frame(frame, now=time.monotonic())
    if isinstance(action, Close):
        connection.close(action.code, action.reason)
        return False
    if isinstance(action, Refuse):
        if action.code == ERR_RATE_LIMITED:
            gateway.metrics.rate_limited += 1
        await connection.publishes.settle()  # replies keep command order
        connection.send(action.reply())
        return True
    await gateway.handler.submit(connection, action.command)
    return not connection.closed
