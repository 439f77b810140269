"""Running a node on uvicorn: its configuration and the server that drains on SIGTERM.

With ``lean_protocol.py``, ``frames.py`` and ``admission.py`` this package is the only code
that knows uvicorn (``tests/test_architecture.py`` checks it): the single place to
re-check on a uvicorn upgrade.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import uvicorn

from tidings.server.config import Settings
from tidings.server.gateway.drain import drain_node
from tidings.server.transport.lean_protocol import LeanWebSocketProtocol

if TYPE_CHECKING:
    from tidings.server.node import NodeState

__all__ = ["DrainingServer", "node_config", "node_server"]

logger = logging.getLogger("tidings.drain")


def node_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration every node runs with (``tidings serve`` and the tests' nodes)."""
    return uvicorn.Config(
        app,
        # DESIGN.md "Performance shape": websockets-sansio costs least CPU and memory per connection;
        # the lean subclass swaps its per-connection queue and event for smaller ones (lean_protocol.py).
        ws=LeanWebSocketProtocol,
        # permessage-deflate compresses every frame again per connection (the shared encoded frame is
        # lost) and costs ~18 KiB more per idle browser connection (measured: 23.7 vs 5.7 KiB).
        ws_per_message_deflate=False,
        ws_max_size=max(4 * settings.max_message_size, 1 << 20),  # larger frames get a 413 reply first
        ws_ping_interval=settings.ping_interval,
        ws_ping_timeout=settings.ping_timeout,
        lifespan="on",
        **options,
    )


def node_server(
    app: Any, settings: Settings, *, shared_sockets: Sequence[socket.socket] = (), log_level: str = "info"
) -> DrainingServer:
    """The server ``tidings serve`` runs: ``server.run(sockets=[own, *shared_sockets])``.

    uvicorn sets up its loggers while the config is built: configure logging after this call.
    """
    config = node_config(app, settings, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
    # SIGTERM drains the node first (gateway/drain.py); the shared listeners close as it starts.
    return DrainingServer(config, settings, shared_sockets=shared_sockets)


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` that drains on SIGTERM before its usual shutdown.

    Args:
        config: the uvicorn config (its app must be ``create_app(settings)``).
        settings: drain timeout, batch size and interval.
        shared_sockets: listeners to close as soon as the drain starts (``SO_REUSEPORT``
            ones shared with other nodes).
    """

    def __init__(
        self, config: uvicorn.Config, settings: Settings, shared_sockets: Sequence[socket.socket] = ()
    ) -> None:
        super().__init__(config)
        self.settings = settings
        self.shared_sockets = list(shared_sockets)
        self.drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backstop: asyncio.TimerHandle | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if (
            sig == signal.SIGTERM
            and self.drain_task is None
            and self.started
            and not self.should_exit
            and self._loop is not None
        ):
            # A signal handler runs between two bytecodes of the loop's thread: hand over, do nothing here.
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self.drain_task is None and not self.should_exit:
            self.drain_task = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        """Run the whole drain (steps 1 and 2 of the module docstring), then let uvicorn shut down."""
        loop = asyncio.get_running_loop()
        settings = self.settings
        start = loop.time()
        deadline = start + settings.drain_timeout
        self._backstop = loop.call_at(deadline, self._force_exit)
        try:
            state = cast("NodeState", self.lifespan.state)
            await drain_node(state, start=start, shared_listeners_closed=self._close_shared_listeners)
        except Exception:
            logger.exception("drain failed; shutting down at once")
        finally:
            # uvicorn reads this when its shutdown starts: its own grace for requests in flight, but
            # never past the drain deadline (at least 1 s).
            remaining = math.floor(deadline - loop.time())
            configured = self.config.timeout_graceful_shutdown
            grace = remaining if configured is None else min(configured, remaining)
            self.config.timeout_graceful_shutdown = max(1, grace)
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets=sockets)
        finally:
            if self._backstop is not None:
                self._backstop.cancel()

    def _force_exit(self) -> None:
        if not self.force_exit:
            logger.warning("drain timeout reached; exiting now")
            self.force_exit = True
            self.should_exit = True

    def _close_shared_listeners(self) -> None:
        names = {sock.getsockname() for sock in self.shared_sockets}
        for server in self.servers:
            if any(listener.getsockname() in names for listener in server.sockets):
                server.close()
