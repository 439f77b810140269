"""The hub: this node's registry of connections and of who is subscribed to what.

It is the backplane's publication handler. A publication is encoded once per
codec and the same frame object is queued for every local subscriber; fan-out
never awaits a client (a full outbox closes that client, see connection.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from tidings.server.cluster.backplane import Backplane, Publication
from tidings.server.gateway.protocol import Codec, Frame, publication_push
from tidings.server.gateway.session import Session

__all__ = ["Hub", "Subscriber"]


class Subscriber(Protocol):
    """A local connection, as the hub and those who look it up there (commands, control, drain,
    metrics) see it: its session, and sending and closing that never await."""

    @property
    def codec(self) -> Codec: ...

    @property
    def client_id(self) -> str: ...

    @property
    def session(self) -> Session:
        """Who is connected and to which channels."""

    @property
    def closed(self) -> bool:
        """True once the connection is closing or gone: nothing more is sent."""

    def deliver(self, publication: Publication, frame: Frame) -> None:
        """Queue ``frame`` (the encoded publication push) without awaiting anything."""

    def send(self, message: dict[str, Any]) -> None:
        """Encode and queue one reply or push without awaiting anything."""

    def close(self, code: int, reason: str) -> None:
        """Send a ``disconnect`` push and close with ``code``; never awaits."""

    async def wait_closed(self) -> None:
        """Return once the close frame is out (or its grace period is over)."""


class Hub:
    """Local connections and channel subscriptions, refcounted onto the backplane.

    Guarantees:
      * The backplane is subscribed to a channel while at least one local
        subscriber wants it, and unsubscribed after the last one leaves.
        ``subscribe``/``unsubscribe`` of one channel are serialised by a
        per-channel lock, so concurrent joins and leaves cannot race
        (broadcaster's check-await-act bug).
      * ``deliver`` is synchronous: encode once per codec, queue everywhere.
    """

    def __init__(self, backplane: Backplane) -> None:
        self._backplane = backplane
        self._channels: dict[str, dict[Subscriber, None]] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self.connections: dict[str, Subscriber] = {}
        self.deliveries = 0  # frames queued for subscribers, for /metrics
        self.publications = 0  # publications handed to deliver(), for /metrics

    # --- registry ----------------------------------------------------------------------------------

    def register(self, subscriber: Subscriber) -> None:
        self.connections[subscriber.client_id] = subscriber

    def unregister(self, subscriber: Subscriber) -> None:
        self.connections.pop(subscriber.client_id, None)

    def subscribers(self, channel: str) -> Iterator[Subscriber]:
        return iter(tuple(self._channels.get(channel, ())))

    def channels(self) -> list[str]:
        """The channels that have a local subscriber now."""
        return list(self._channels)

    @property
    def subscription_count(self) -> int:
        """Subscriptions of the local connections, all channels together (for /metrics)."""
        return sum(len(subscribers) for subscribers in self._channels.values())

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    # --- subscriptions -----------------------------------------------------------------------------

    @asynccontextmanager
    async def _channel_lock(self, channel: str):  # type: ignore[no-untyped-def]
        lock, users = self._locks.get(channel, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[channel] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[channel]
            if users == 1:
                del self._locks[channel]
            else:
                self._locks[channel] = (lock, users - 1)

    async def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Add ``subscriber`` to ``channel``; subscribe the backplane first if it is the first one.

        Raises:
            BackplaneUnavailable: the backplane could not subscribe; nothing was registered.
        """
        async with self._channel_lock(channel):
            subscribers = self._channels.get(channel)
            if subscribers is None:
                await self._backplane.subscribe(channel)
                subscribers = self._channels[channel] = {}
            subscribers[subscriber] = None

    async def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Remove ``subscriber`` from ``channel``; unsubscribe the backplane after the last one."""
        async with self._channel_lock(channel):
            subscribers = self._channels.get(channel)
            if subscribers is None or subscriber not in subscribers:
                return
            del subscribers[subscriber]
            if not subscribers:
                del self._channels[channel]
                await self._backplane.unsubscribe(channel)

    # --- fan-out -----------------------------------------------------------------------------------

    def deliver(self, publication: Publication) -> None:
        """Queue ``publication`` for every local subscriber of its channel (the backplane's handler)."""
        self.publications += 1
        subscribers = self._channels.get(publication.channel)
        if not subscribers:
            return
        kind = publication.kind  # set by the backplane where it built the publication (kind_of)
        if kind == "publication":
            push = publication_push(
                publication.channel,
                publication.epoch,
                publication.offset,
                publication.data,
                publication.sender.encode() if publication.sender is not None else None,
                publication.ts,
            )
        else:
            push = _event_push(publication)
        frames: dict[Codec, Frame] = {}
        # A copy: a subscriber that overflows is removed later, but never while we iterate.
        for subscriber in tuple(subscribers):
            codec = subscriber.codec
            frame = frames.get(codec)
            if frame is None:
                frame = frames[codec] = codec.encode(push)
            subscriber.deliver(publication, frame)
        self.deliveries += len(subscribers)


def _event_push(publication: Publication) -> dict[str, Any]:
    kind, data = publication.kind, publication.data
    if kind == "join" or kind == "leave":
        return {"push": kind, "channel": publication.channel, "member": data.get("member")}
    if kind == "notification" or kind == "unread":
        return data  # type: ignore[no-any-return]  # notifier.py built the whole push
    # "control" never reaches the hub (app.py hands sys: channels to control.py); were it to, as is.
    return publication_push(
        publication.channel, publication.epoch, publication.offset, data, None, publication.ts
    )
