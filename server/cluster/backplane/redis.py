"""RedisBackplane: pub/sub fan-out between nodes plus Streams history, over redis-py asyncio.

A channel's stream (its ``meta`` hash and history, the Lua publish and read) is in streams.py;
its pub/sub channel carries live envelopes ``<epoch>:<offset>:<payload>`` (envelope.py). The
live order is the history order (docs/guarantees.md). The pub/sub side, with gap repair, is
link.py; this module routes channels to links and commands to servers for each deployment
(``TIDINGS_REDIS_URL``, redis_target.py):

* one server: one link and one command pipeline per node;
* Sentinel: the same, and each (re)connect asks the sentinels for the primary, so both follow
  a failover; a publish during the switch fails fast with BackplaneUnavailable (a temporary
  error clients retry);
* Redis Cluster: sharded pub/sub, one link and one pipeline per shard primary (a publication
  reaches only the nodes subscribed on its shard). The slot map (slots.py) is read again when a
  server redirects (MOVED), unsubscribes a channel whose slot moved, or a shard stops answering,
  and every few seconds; channels whose slot is served elsewhere now move to that shard's link,
  which reads what they missed from history before live publications go on.

When Redis is unreachable every operation raises BackplaneUnavailable within the short socket
timeouts, ``ready`` is False, and the links reconnect with capped exponential backoff plus
jitter, logging each change of state once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from tidings.server.cluster.backplane import (
    HistoryPage,
    HistoryPolicy,
    Publication,
    PublicationHandler,
    Sender,
    StreamPosition,
)
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.backplane.cluster_commands import ClusterCommands
from tidings.server.cluster.backplane.connections import ConnectionFactory
from tidings.server.cluster.backplane.link import LinkTiming, PubSubLink
from tidings.server.cluster.backplane.pipeline import CommandPipeline, Commands
from tidings.server.cluster.backplane.slots import SlotMap
from tidings.server.cluster.backplane.streams import ChannelStreams
from tidings.server.cluster.redis_target import Address, parse_redis_url

__all__ = ["RedisBackplane"]

logger = logging.getLogger("tidings.backplane.redis")

_TOPOLOGY_INTERVAL = 5.0  # seconds between slot map reads when nothing asked for one
_MIN_REFRESH_GAP = 0.2  # seconds: a shard that keeps failing must not make every node hammer the rest


class RedisBackplane:
    """The Backplane contract over Redis or Valkey (see the package docstring for the guarantees).

    Args:
        url: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://`` or ``redis+sentinel://``
            (redis_target.py).
        node_id: this node's id (named in the connect reply and ``CLIENT LIST``).
        key_prefix: starts every key and pub/sub channel; one cluster per prefix.
        policies: history size and TTL per namespace; key ``""`` is the default.
        socket_timeout: seconds a command may take before Redis counts as unreachable.
        connect_timeout: seconds a connection attempt may take.
        health_interval: seconds of silence on a link after which it is PINGed; no
            answer within another interval counts as a lost link.
        min_backoff, max_backoff: reconnect delays of the links, in seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        key_prefix: str = "tidings",
        policies: Mapping[str, HistoryPolicy] | None = None,
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        health_interval: float = 3.0,
        min_backoff: float = 0.05,
        max_backoff: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self._prefix = key_prefix
        self._target = parse_redis_url(url)
        self._timing = LinkTiming(socket_timeout, connect_timeout, health_interval, min_backoff, max_backoff)
        self._connections = ConnectionFactory(
            self._target, key_prefix=key_prefix, node_id=node_id, connect_timeout=connect_timeout
        )
        self._commands: Commands
        self._slots: SlotMap | None = None
        if self._target.sharded:
            self._slots = SlotMap(
                self._target.seeds,
                lambda a: self._connections.connector("topology", address=a)(None),
                timeout=socket_timeout,
            )
            self._commands = ClusterCommands(self._slots, self._new_pipeline, self._topology_changed)
        else:
            self._commands = self._new_pipeline(None)
        self._streams = ChannelStreams(
            self._commands, key_prefix=key_prefix, policies=policies or {}, sharded=self._target.sharded
        )
        self._handler: PublicationHandler | None = None
        self._links: dict[Address | None, PubSubLink] = {}  # by shard primary; None: the one server
        self._retired = [0, 0, 0]  # reconnects, repaired, gap repairs of links closed since
        self._topology_task: asyncio.Task[None] | None = None
        self._topology_wanted = asyncio.Event()
        self._closed = False

    def _new_pipeline(self, address: Address | None) -> CommandPipeline:
        connect = self._connections.connector("commands", address=address)
        return CommandPipeline(lambda: connect(None), timeout=self._timing.socket_timeout)

    def _new_link(self, address: Address | None) -> PubSubLink:
        link = PubSubLink(
            self._connections.connector("pubsub", address=address),
            name=self._target.url if address is None else f"{address[0]}:{address[1]}",
            key_prefix=self._prefix,
            node_id=self.node_id,
            timing=self._timing,
            sharded=self._target.sharded,
            read=lambda channel, after, limit, max_bytes: self._streams.read(
                channel, after=after, limit=limit, max_bytes=max_bytes
            ),
            deliver=self._deliver,
            top=self.top,
            on_moved=self._topology_changed,
        )
        self._links[address] = link
        link.start()
        return link

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self, handler: PublicationHandler) -> None:
        """Start the link(s) and wait (up to the connect timeout) for them to come up.

        A Redis that is down at start is not an error: ``ready`` stays False and the
        links keep trying, so the node recovers by itself.
        """
        self._handler = handler
        wait = self._timing.connect_timeout + self._timing.socket_timeout
        if self._slots is None:
            await self._new_link(None).wait_up(wait)
            return
        self._topology_task = asyncio.get_running_loop().create_task(self._watch_topology())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while not self.ready:
                    await asyncio.gather(*(link.wait_up(wait) for link in list(self._links.values())))
                    if not self._links:
                        await asyncio.sleep(self._timing.min_backoff)

    async def close(self) -> None:
        self._closed = True
        task, self._topology_task = self._topology_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.close()
        await self._commands.close()
        await self._connections.close()

    @property
    def commands(self) -> Commands:
        """The node's pipelined commands (routed by key on a cluster), for stores' hot calls too."""
        return self._commands

    @property
    def link_reconnects(self) -> int:
        """Times a pub/sub link came back after a loss (for tests and /metrics)."""
        return self._retired[0] + sum(link.reconnects for link in self._links.values())

    @property
    def repaired(self) -> int:
        """Publications handed on from history because pub/sub missed them (metrics.CountsLinkRecoveries)."""
        return self._retired[1] + sum(link.repaired for link in self._links.values())

    @property
    def gap_repairs(self) -> int:
        """History reads that closed (part of) a gap (metrics.CountsGapRepairs)."""
        return self._retired[2] + sum(link.gap_repairs for link in self._links.values())

    @property
    def ready(self) -> bool:
        """Every link is up (on a cluster: one per primary of the slot map, which is known)."""
        if self._slots is not None:
            primaries = self._slots.primaries
            if not primaries or any(a not in self._links for a in primaries):
                return False
            return all(self._links[a].ready for a in primaries)
        return all(link.ready for link in self._links.values()) and bool(self._links)

    # --- publishing and reading ----------------------------------------------------------------------

    async def publish(
        self, channel: str, data: Any, *, sender: Sender | None = None, ephemeral: bool = False
    ) -> StreamPosition | None:
        return await self._streams.publish(channel, data, sender=sender, ephemeral=ephemeral)

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
        after = since.offset if since is not None else 0
        return await self._streams.read(
            channel, after=after, limit=limit, reverse=reverse, before=before, max_bytes=max_bytes
        )

    async def top(self, channel: str) -> StreamPosition:
        page = await self._streams.read(channel, after=0, limit=0, create=True)
        return page.top

    def position(self, channel: str) -> StreamPosition | None:
        for link in self._links.values():
            position = link.position(channel)
            if position is not None:
                return position
        return None

    # --- subscriptions -------------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe this node to ``channel``; return once publications after the current top flow.

        Raises:
            BackplaneUnavailable: the link is down, or was lost before the subscription took.
        """
        await self._link_for(channel).subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``; the UNSUBSCRIBE itself is written in the background. Never raises."""
        for link in self._links.values():  # the one carrying it (a moving channel may not be on its owner's)
            link.unsubscribe(channel)

    def _link_for(self, channel: str) -> PubSubLink:
        if self._slots is None:
            return self._links[None]
        address = self._slots.owner(redis_keys.channel_pubsub(self._prefix, channel))
        link = self._links.get(address)
        return link if link is not None else self._new_link(address)

    def _deliver(self, publication: Publication) -> None:
        if self._handler is not None:
            self._handler(publication)

    # --- the cluster's topology ----------------------------------------------------------------------

    def _topology_changed(self) -> None:
        """Something said a slot moved or a shard is failing: read the slot map again soon."""
        self._topology_wanted.set()

    async def _watch_topology(self) -> None:
        """Read the slot map when asked (and every few seconds), and move channels to their owners."""
        assert self._slots is not None
        attempt = 0
        while not self._closed:
            self._topology_wanted.clear()
            if await self._slots.refresh():
                attempt = 0
                self._rebalance()
                delay = _TOPOLOGY_INTERVAL
            else:
                logger.warning("no Redis Cluster node answered CLUSTER SLOTS (node %s)", self.node_id)
                delay = self._timing.backoff(attempt)
                attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._topology_wanted.wait()
            await asyncio.sleep(_MIN_REFRESH_GAP)

    def _rebalance(self) -> None:
        """One link per primary; every channel on the link of the primary that serves its slot now."""
        assert self._slots is not None
        primaries = self._slots.primaries
        for primary in primaries:
            if primary not in self._links:
                self._new_link(primary)
        for address, link in list(self._links.items()):
            for channel in list(link.channels()):
                owner = self._slots.owner(redis_keys.channel_pubsub(self._prefix, channel))
                if owner != address:
                    logger.info("%s moves from %s to %s:%d", channel, link.name, *owner)
                    track = link.release(channel)
                    if track is not None:  # a subscription still syncing fails instead (clients retry)
                        (self._links.get(owner) or self._new_link(owner)).adopt(channel, track)
            if address in primaries:
                link.resubscribe_unsent()
            elif not any(link.channels()):
                self._retire(address, link)
        assert isinstance(self._commands, ClusterCommands)
        self._commands.prune(primaries)

    def _retire(self, address: Address | None, link: PubSubLink) -> None:
        """Close the link of a server that no longer serves any slot (keeping its counts)."""
        del self._links[address]
        self._retired[0] += link.reconnects
        self._retired[1] += link.repaired
        self._retired[2] += link.gap_repairs
        task = asyncio.get_running_loop().create_task(link.close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
