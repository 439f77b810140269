"""Control messages between nodes, carried as publications on ``sys:`` channels.

``sys:control`` reaches every node (room changes, kicking a user out of a room,
disconnecting a user everywhere); ``sys:node:<id>`` reaches one node (targeted
commands such as closing one connection). Clients can never use these channels:
``Channel.parse`` rejects the ``sys`` namespace.

Control messages are as reliable as publications: they are published with
offsets into the channel's history, and a node whose pub/sub link dropped reads
the ones it missed from history before going on (backplane gap repair). Should
history no longer hold them (a gap in the offsets, or a new epoch), the node
assumes that anything may have changed: it drops its whole room-access cache and
checks every private-room subscription it holds again.

Access is decided again, never assumed: a ``kick`` or a room change makes each
node ask the directory (through the cache, which the message invalidated first)
whether each affected subscriber may still read the room, so a message that is
repaired late or arrives twice does no harm.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tidings.server.channels import Channel
from tidings.server.cluster.backplane import Backplane, BackplaneUnavailable, Publication
from tidings.server.cluster.rooms import CachedRooms
from tidings.server.errors import StoreUnavailable
from tidings.server.gateway.hub import Hub, Subscriber
from tidings.server.gateway.protocol import CLOSE_FORBIDDEN, ProtocolError, close_reconnects

__all__ = ["CLUSTER_CHANNEL", "ControlPlane", "node_channel"]

logger = logging.getLogger("tidings.control")

CLUSTER_CHANNEL = Channel.system("control").text

_RETRY_TIMEOUT = 30.0  # seconds a room check retries while Redis is away before it fails closed


def node_channel(node_id: str) -> str:
    return Channel.system(f"node:{node_id}").text


class ControlPlane:
    """Sends control messages and carries out those this node receives.

    Guarantees:
      * A message sent with ``broadcast`` is carried out by every node that is subscribed when it
        is published, including the sender, even if a node's pub/sub link drops meanwhile.
      * After a ``kick`` or a room change, no connection on any node keeps a subscription to a
        private room its user may not read (checked against the directory, failing closed when
        the directory stays unreachable).
    """

    def __init__(
        self,
        backplane: Backplane,
        hub: Hub,
        rooms: CachedRooms,
        *,
        drop_subscription: Callable[[Subscriber, Channel], Awaitable[None]],
    ) -> None:
        self._backplane = backplane
        self._hub = hub
        self._rooms = rooms
        self._drop_subscription = drop_subscription
        self._tasks: set[asyncio.Task[None]] = set()
        self._positions: dict[str, tuple[str, int]] = {}  # channel → last (epoch, offset) carried out

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
            # Whatever changed while we were not listening: ask the directory again.
            self._resync()
            return

    async def broadcast(self, op: str, **fields: Any) -> None:
        """Send a message to every node (kept in history, so a node whose link dropped still gets it).

        Raises:
            BackplaneUnavailable: it was not sent; the caller answers 503.
        """
        await self._backplane.publish(CLUSTER_CHANNEL, {"op": op, **fields})

    async def send_to_node(self, node_id: str, op: str, **fields: Any) -> None:
        await self._backplane.publish(node_channel(node_id), {"op": op, **fields})

    def handle(self, publication: Publication) -> None:
        """Carry out one control message (called from the backplane's reader; never blocks)."""
        if publication.offset is not None and self._missed_some(publication):
            logger.warning("%s: control messages were lost; checking every room again", publication.channel)
            self._resync()
        message = publication.data
        if not isinstance(message, dict):
            return
        op = message.get("op")
        if op == "invalidate_room":
            # Sent when a room is created or changes (made private, a member added): re-check its subscribers.
            room = str(message.get("room"))
            self._rooms.invalidate(room)
            self._spawn(self._check_subscribers(room, None))
        elif op == "kick":
            room = _room_of(message)
            self._rooms.invalidate(room)
            self._spawn(self._check_subscribers(room, str(message.get("user"))))
        elif op == "disconnect_user":
            user = message.get("user")
            self._disconnect(
                lambda c: c.session.principal is not None and c.session.user == user, message, publication
            )
        elif op == "disconnect_client":
            self._disconnect(lambda c: c.client_id == message.get("client"), message, publication)
        else:
            logger.warning("unknown control op %r", op)

    def _missed_some(self, publication: Publication) -> bool:
        """Whether offsets were skipped since the last message of this channel (history lost them)."""
        assert publication.offset is not None
        last = self._positions.get(publication.channel)
        self._positions[publication.channel] = (publication.epoch, publication.offset)
        if last is None:
            return False  # the first message since this node subscribed
        epoch, offset = last
        if publication.epoch != epoch:
            # A new life of the stream (it expired after an hour without messages, or Redis lost it):
            # nothing was missed if this is its first message.
            return publication.offset != 1
        return publication.offset != offset + 1

    def _resync(self) -> None:
        self._rooms.clear()
        rooms = {room for channel in self._hub.channels() if (room := _room_name(channel)) is not None}
        for room in rooms:
            self._spawn(self._check_subscribers(room, None))

    def _disconnect(self, matches: Any, message: dict[str, Any], publication: Publication) -> None:
        code = message.get("code", CLOSE_FORBIDDEN)
        if not isinstance(code, int) or not 4000 <= code <= 4999:
            code = CLOSE_FORBIDDEN
        reason = str(message.get("reason") or "disconnected by the server")
        # A second of tolerance for the clocks of two nodes; a disconnect must not spare a connection.
        sent_at = publication.ts / 1000 + 1.0
        for connection in list(self._hub.connections.values()):
            # A message repaired late must not close a connection that opened after it was sent.
            if not connection.closed and matches(connection) and connection.session.opened_at <= sent_at:
                logger.info(
                    "closing %s (%d%s)",
                    connection.client_id,
                    code,
                    "" if close_reconnects(code) else ", final",
                )
                connection.close(code, reason)

    async def _check_subscribers(self, room: str, user: str | None) -> None:
        """Remove every local subscriber of ``room`` (of ``user`` only, if given) that may not read it."""
        try:
            channel = Channel.room(room)
        except ProtocolError:
            logger.warning("control message names no room: %r", room)
            return
        deadline = time.monotonic() + _RETRY_TIMEOUT
        delay = 0.1
        for subscriber in _connections(self._hub.subscribers(channel.text)):
            if subscriber.session.principal is None or (user is not None and subscriber.session.user != user):
                continue
            while True:
                try:
                    allowed = await self._rooms.may_access(room, subscriber.session.user)
                    break
                except StoreUnavailable:
                    if time.monotonic() > deadline:
                        allowed = False  # fail closed: the directory stayed unreachable
                        break
                    await asyncio.sleep(delay + random.uniform(0, delay))
                    delay = min(delay * 2, 2.0)
            if allowed or channel.text not in subscriber.session.channels:
                continue
            try:
                await self._drop_subscription(subscriber, channel)
            except StoreUnavailable:
                # The hub and session let go already; presence is fixed by the dead-node sweep or a heartbeat.
                logger.warning(
                    "removed %s from %s, but presence could not be updated", subscriber.client_id, channel
                )
            subscriber.send(
                {"push": "unsubscribe", "channel": channel.text, "reason": "removed from the room"}
            )

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _connections(subscribers: Iterable[Subscriber]) -> list[Subscriber]:
    return [s for s in subscribers if not s.closed]


def _room_name(channel: object) -> str | None:
    """The room of a ``room:<name>`` channel; None for any other channel or text."""
    try:
        return Channel.parse(channel).room_name
    except ProtocolError:
        return None


def _room_of(message: dict[str, Any]) -> str:
    """The room a ``kick`` names: by its channel (``room:<name>``), else by ``room``."""
    return _room_name(message.get("channel")) or str(message.get("room"))
