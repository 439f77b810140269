"""The backplane: cross-node fan-out plus per-channel history.

Two implementations share one contract (``tests/test_backplane_contract.py`` runs
over both): :class:`~tidings.server.cluster.backplane.memory.InMemoryBackplane` for a
single node, and :class:`~tidings.server.cluster.backplane.redis.RedisBackplane` for a
cluster.

Errors:
    BackplaneUnavailable
        the backplane cannot be reached; the caller answers 503 (temporary). A
        :class:`~tidings.server.errors.StoreUnavailable` (the hierarchy: errors.py),
        re-exported here for the backplane's callers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tidings.server.channels import SYSTEM_PREFIX, PublicationKind, namespace_of
from tidings.server.errors import BackplaneUnavailable
from tidings.server.gateway.protocol import StreamPosition

__all__ = [
    "HISTORY_OVERHEAD",
    "Backplane",
    "BackplaneUnavailable",
    "HistoryPage",
    "HistoryPolicy",
    "Publication",
    "PublicationHandler",
    "PublicationKind",
    "Sender",
    "StreamPosition",
    "kind_of",
]


HISTORY_OVERHEAD = 96
"""Bytes counted per publication besides its payload when a history read is bounded by ``max_bytes``
(channel, epoch, offset, ts and punctuation around it in a reply; history.lua counts the same)."""


@dataclass(frozen=True, slots=True)
class Sender:
    """Who published: the user and its connection id (absent for backend publications)."""

    user: str
    client: str

    def encode(self) -> dict[str, str]:
        return {"user": self.user, "client": self.client}


@dataclass(frozen=True, slots=True)
class Publication:
    """One message of a channel. ``offset`` is None for an ephemeral publication (no history).

    ``kind`` says which push subscribers get (or, for ``control``, that no client does); the
    backplane sets it with :func:`kind_of` where it builds the publication.
    """

    channel: str
    epoch: str
    offset: int | None
    data: Any
    sender: Sender | None
    ts: int  # milliseconds since the Unix epoch, stamped by the publishing node
    kind: PublicationKind = "publication"


def kind_of(channel: str, offset: int | None, sender: Sender | None, data: Any) -> PublicationKind:
    """The kind of a publication, from what every node reads of it.

    The Redis envelope carries no kind (nodes of the previous version read the same bytes), so
    the kind is a function of what it does carry, computed once per publication where it is built
    (``envelope.decode_publication``, ``InMemoryBackplane.publish``): memory and Redis, old and
    new nodes agree.
    """
    if channel.startswith(SYSTEM_PREFIX):
        return "control"
    if offset is not None or sender is not None:
        return "publication"
    # A server event (join/leave, a notification push) travels as an ephemeral publication without
    # a sender; clients cannot forge one: their publications always carry a sender.
    if isinstance(data, dict):
        push = data.get("push")
        if push == "join" or push == "leave":
            return push  # type: ignore[no-any-return]
        if (push == "notification" or push == "unread") and namespace_of(channel) == "user":
            return push  # type: ignore[no-any-return]  # notifier.py built the whole push
    return "publication"


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Publications read from a channel's history, and the channel's top position at that moment.

    ``more`` is True when the range asked for holds publications the page left out (it stopped at
    its ``limit`` or at its byte bound): read on after the last one (or before the oldest one, when
    reading newest first).
    """

    top: StreamPosition
    publications: list[Publication]
    more: bool = False
    size: int = 0  # bytes the publications were counted as against ``max_bytes``


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much history a channel keeps: at most ``size`` publications, for ``ttl`` seconds after the last one."""

    size: int = 1000
    ttl: float = 86400.0


PublicationHandler = Callable[[Publication], None]
"""Receives every publication of every channel this node is subscribed to, in offset order per channel.

It is called synchronously from the backplane's reader and must not block: the hub
only encodes and queues (DESIGN.md "Performance shape")."""


class Backplane(Protocol):
    """Cross-node fan-out plus per-channel history.

    Guarantees:
      * ``publish`` appends to history and fans out as one atomic step per channel,
        so offsets are consecutive and the live order is the history order.
      * The handler given to ``start`` sees each publication of a subscribed channel
        at most once and in offset order. Redis pub/sub itself is at-most-once:
        the Redis implementation closes gaps from history (offset jumps and
        reconnects) before it hands a publication on.
      * A lost or expired stream gets a new ``epoch``, so a client position from
        the old life is detected by ``history.recover`` instead of replayed.
      * Operations raise :class:`BackplaneUnavailable` when the backplane is
        unreachable; nothing is silently dropped.
    """

    node_id: str

    async def start(self, handler: PublicationHandler) -> None:
        """Connect and begin passing publications of subscribed channels to ``handler``."""

    async def close(self) -> None:
        """Stop reading and release connections. Idempotent."""

    @property
    def ready(self) -> bool:
        """Whether the backplane is reachable now (``/readyz``)."""

    async def publish(
        self, channel: str, data: Any, *, sender: Sender | None = None, ephemeral: bool = False
    ) -> StreamPosition | None:
        """Publish ``data``; return its position, or None for an ephemeral publication.

        Order: publishes whose coroutines were first run in some order are published in that
        order (the publication is queued before the coroutine first waits), so a caller may
        start several without awaiting each one (the command runner pipelines them).
        """

    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel`` on this node. The hub calls it once per channel (refcounted)."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` on this node."""

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 100,
        reverse: bool = False,
        before: int | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        """Read history. Writes nothing: a channel that never had a publication reads as epoch "" offset 0.

        Args:
            since: only publications with a larger offset (the epoch is not checked here;
                ``history.recover`` compares it with ``top``).
            limit: at most this many publications.
            reverse: newest first; with ``since``, the newest ``limit`` after it.
            before: only publications with a smaller offset.
            max_bytes: stop before the publications' payloads (plus a fixed overhead each) exceed
                this, so a reply is bounded before it is built; at least one is returned.
        """

    async def top(self, channel: str) -> StreamPosition:
        """The channel's current position: its epoch and the offset of its last publication (0 if none).

        A channel without an epoch gets one here, so that a subscriber learns the epoch its first
        publication will carry.
        """

    def position(self, channel: str) -> StreamPosition | None:
        """The position of the last publication this node handed on for ``channel``, or None.

        Known only while this node is subscribed to the channel and has no gap being read; then
        every later publication is still to be handed on, so a subscriber added to the hub now
        that starts from this position misses nothing and gets nothing twice. It saves the round
        trip of :meth:`top` for channels the node already carries (connect and reconnect storms).
        """
