"""Control messages between nodes, carried as ephemeral publications on ``sys:`` channels.

``sys:control`` reaches every node (cache invalidation, kicking a user out of a
room, disconnecting a user everywhere); ``sys:node:<id>`` reaches one node
(targeted commands such as closing one connection). Clients can never use these
channels: protocol.check_channel rejects the ``sys`` namespace.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from .backplane import Backplane, BackplaneUnavailable, Publication
from .connection import Connection
from .hub import Hub
from .protocol import CLOSE_FORBIDDEN, close_reconnects
from .rooms import CachedRooms

__all__ = ["CLUSTER_CHANNEL", "ControlPlane", "node_channel"]

logger = logging.getLogger("tidings.control")

CLUSTER_CHANNEL = "sys:control"


def node_channel(node_id: str) -> str:
    return f"sys:node:{node_id}"


class ControlPlane:
    """Sends control messages and carries out those this node receives.

    Guarantee: a message sent with ``broadcast`` is carried out by every node
    that is subscribed when it is published, including the sender.
    """

    def __init__(
        self,
        backplane: Backplane,
        hub: Hub,
        rooms: CachedRooms,
        *,
        drop_subscription: Callable[[Connection, str], Awaitable[None]],
    ) -> None:
        self._backplane = backplane
        self._hub = hub
        self._rooms = rooms
        self._drop_subscription = drop_subscription
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def channels(self) -> list[str]:
        return [CLUSTER_CHANNEL, node_channel(self._backplane.node_id)]

    async def start(self) -> None:
        """Subscribe the control channels; while the backplane is down, keep trying in the background.

        A node must come up even when Redis is briefly unreachable (it reports not ready meanwhile).
        """
        try:
            for channel in self.channels:
                await self._backplane.subscribe(channel)
        except BackplaneUnavailable:
            logger.warning("control channels not subscribed yet: backplane unavailable; retrying")
            self._spawn(self._subscribe_until_done())

    async def _subscribe_until_done(self) -> None:
        delay = 0.2
        while True:
            await asyncio.sleep(delay + random.uniform(0, delay))
            try:
                for channel in self.channels:
                    await self._backplane.subscribe(channel)
            except BackplaneUnavailable:
                delay = min(delay * 2, 5.0)
                continue
            logger.info("control channels subscribed")
            return

    async def broadcast(self, op: str, **fields: Any) -> None:
        await self._backplane.publish(CLUSTER_CHANNEL, {"op": op, **fields}, ephemeral=True)

    async def send_to_node(self, node_id: str, op: str, **fields: Any) -> None:
        await self._backplane.publish(node_channel(node_id), {"op": op, **fields}, ephemeral=True)

    def handle(self, publication: Publication) -> None:
        """Carry out one control message (called from the backplane's reader; never blocks)."""
        message = publication.data
        if not isinstance(message, dict):
            return
        op = message.get("op")
        if op == "invalidate_room":
            self._rooms.invalidate(str(message.get("room")))
        elif op == "kick":
            self._spawn(self._kick(str(message.get("user")), str(message.get("channel"))))
        elif op == "disconnect_user":
            self._disconnect(
                lambda c: c.session.principal is not None and c.session.user == message.get("user"), message
            )
        elif op == "disconnect_client":
            self._disconnect(lambda c: c.client_id == message.get("client"), message)
        else:
            logger.warning("unknown control op %r", op)

    def _disconnect(self, matches: Any, message: dict[str, Any]) -> None:
        code = message.get("code", CLOSE_FORBIDDEN)
        if not isinstance(code, int) or not 4000 <= code <= 4999:
            code = CLOSE_FORBIDDEN
        reason = str(message.get("reason") or "disconnected by the server")[:120]
        for connection in list(self._hub.connections.values()):
            if isinstance(connection, Connection) and matches(connection):
                logger.info(
                    "closing %s (%d%s)",
                    connection.client_id,
                    code,
                    "" if close_reconnects(code) else ", final",
                )
                connection.close(code, reason)

    async def _kick(self, user: str, channel: str) -> None:
        self._rooms.invalidate(channel[5:] if channel.startswith("room:") else channel)
        for subscriber in self._hub.subscribers(channel):
            if (
                isinstance(subscriber, Connection)
                and subscriber.session.principal
                and subscriber.session.user == user
            ):
                await self._drop_subscription(subscriber, channel)
                subscriber.send(
                    {"push": "unsubscribe", "channel": channel, "reason": "removed from the room"}
                )

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
