"""Graceful drain: on SIGTERM a node hands its clients to the others, then exits.

What happens, within ``TIDINGS_DRAIN_TIMEOUT`` seconds of the signal:

1. ``draining`` is set: ``/readyz`` answers 503 and new WebSockets get HTTP 503
   (``admission.py``), so a load balancer sends them elsewhere. The shared
   ``SO_REUSEPORT`` listener (``tidings up``) is closed at once, so the kernel
   stops handing this node new connections; its own port stays open for
   ``/readyz`` and ``/metrics``.
2. Every connection is told to reconnect — a ``disconnect`` push and close 4001 —
   in batches of ``TIDINGS_DRAIN_BATCH_SIZE`` every ``TIDINGS_DRAIN_INTERVAL``
   seconds, so the other nodes are not stampeded. The batches are squeezed to fit
   the first half of the budget when there are many connections (:func:`plan_batches`).
   Clients reconnect (with jittered backoff) to another node and recover from
   history with ``since``: nothing is lost.
3. uvicorn's own shutdown runs with what is left of the budget: sockets that
   never finished ``connect`` get 1012, the lifespan stops the backplane, and the
   process exits 0. A backstop forces the exit at the deadline.

The signal handling that starts it lives with the rest of uvicorn's specifics in
``transport/server.py``.

Why a custom signal handler and not the lifespan: uvicorn's shutdown first sends
1012 to every WebSocket at once and only then runs the lifespan shutdown, so a
drain hooked there would come after the stampede it is meant to prevent.

A second SIGTERM, or SIGINT, skips the drain (uvicorn's usual fast shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from tidings.server.gateway.protocol import CLOSE_NODE_SHUTDOWN

if TYPE_CHECKING:
    from tidings.server.gateway.hub import Hub, Subscriber
    from tidings.server.node import NodeState

__all__ = ["drain_connections", "drain_node", "plan_batches"]

logger = logging.getLogger("tidings.drain")

_SPREAD_SHARE = 0.5  # of the budget for telling clients to leave
_CLOSE_SHARE = 0.8  # by then every told client should be gone; the rest is for uvicorn and the lifespan


def plan_batches(total: int, *, batch_size: int, interval: float, budget: float) -> tuple[int, float]:
    """How many connections to close at once, and how long to pause between batches (pure).

    Keeps ``batch_size`` and ``interval`` when the whole drain fits in ``budget``
    seconds; otherwise first shortens the pause, then grows the batches, so the
    last batch always starts within the budget.

    Returns:
        ``(batch_size, interval)``; ``batch_size`` is at least 1.
    """
    if total <= 0:
        return max(1, batch_size), 0.0
    batch_size = max(1, batch_size)
    batches = math.ceil(total / batch_size)
    if batches <= 1:
        return batch_size, 0.0
    if (batches - 1) * interval <= budget:
        return batch_size, interval
    # Aim for pauses no shorter than 10 ms: below that the batches are one stampede anyway.
    pause = max(budget / (batches - 1), 0.01) if budget > 0 else 0.0
    if pause <= 0.0:
        return total, 0.0
    slots = max(1, int(budget / pause + 1e-9) + 1)
    return math.ceil(total / slots), pause


async def drain_connections(
    hub: Hub, *, batch_size: int, interval: float, spread_until: float, give_up_at: float
) -> int:
    """Close every connection of ``hub`` with 4001, batch by batch, and wait until they are gone.

    Args:
        batch_size, interval: the pace asked for (see :func:`plan_batches`).
        spread_until: loop time by which the last batch should have been told.
        give_up_at: loop time after which connections still open are left to uvicorn.

    Returns:
        how many connections were told to reconnect.
    """
    loop = asyncio.get_running_loop()
    told: list[Subscriber] = []
    while loop.time() < give_up_at:
        # Sessions that connect meanwhile (their socket was accepted before the drain) are told too.
        pending = [c for c in hub.connections.values() if not c.closed]
        if not pending:
            break
        size, pause = plan_batches(
            len(pending), batch_size=batch_size, interval=interval, budget=spread_until - loop.time()
        )
        for connection in pending[:size]:
            connection.close(CLOSE_NODE_SHUTDOWN, "node shutting down, reconnect")
        told.extend(pending[:size])
        if size < len(pending):
            await asyncio.sleep(min(pause, max(0.0, give_up_at - loop.time())))
    # Wait until the disconnect pushes and close frames are out (each has its own short grace period).
    closing = [asyncio.ensure_future(connection.wait_closed()) for connection in told]
    if closing:
        _, still = await asyncio.wait(closing, timeout=max(0.0, give_up_at - loop.time()))
        for task in still:
            task.cancel()
    return len(told)


async def drain_node(state: NodeState, *, start: float, shared_listeners_closed: Callable[[], None]) -> None:
    """Steps 1 and 2 of the module docstring: refuse new sockets, tell every connection to leave.

    Args:
        state: the node (its ``draining`` flag and hub).
        start: loop time of the signal; the budget is ``drain_timeout`` from it.
        shared_listeners_closed: closes the ``SO_REUSEPORT`` listeners shared with other nodes.
    """
    settings = state["settings"]
    state["draining"].set()
    shared_listeners_closed()
    hub = state["hub"]
    logger.info("draining %d connections within %.1f s", len(hub.connections), settings.drain_timeout)
    told = await drain_connections(
        hub,
        batch_size=settings.drain_batch_size,
        interval=settings.drain_interval,
        spread_until=start + _SPREAD_SHARE * settings.drain_timeout,
        give_up_at=start + _CLOSE_SHARE * settings.drain_timeout,
    )
    logger.info("drained: %d told to reconnect, %d left", told, len(hub.connections))
