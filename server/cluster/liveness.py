"""Node liveness: a short-TTL key per node incarnation, and the sweep that buries dead ones.

An incarnation is one process: its node id plus a boot id drawn at start
(:func:`new_incarnation`). Each node refreshes its incarnation's ``alive`` key
every ``heartbeat_interval``; the key expires ``ttl`` seconds after the last
refresh. Once per tick, the node holding the sweep lease (lease.py) looks for
registered incarnations whose key is gone, removes their presence entries and
announces a ``leave`` for each — once, since only one node sweeps at a time and
HDEL decides who removed an entry. A node killed with SIGKILL is thus gone from
presence within ``ttl`` plus one tick (DESIGN.md, Guarantee 4), also when it is
restarted at once under the same node id (docker-compose ``restart:``): the new
process is a new incarnation, whose heartbeat keeps no dead entry alive.

The heartbeat also writes the incarnation's stats hash (nodes.py) with the same TTL, so the
list of ``GET /api/nodes`` loses a dead node when its liveness key expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.lease import RedisLease, run_once_periodically
from tidings.server.cluster.nodes import encode_stats
from tidings.server.cluster.presence import Member, Presence
from tidings.server.cluster.redis_client import StoreClient
from tidings.server.cluster.redis_errors import REDIS_ERRORS

__all__ = ["NodeLiveness", "new_incarnation"]

logger = logging.getLogger("tidings.liveness")

Announce = Callable[[str, Member], Awaitable[None]]


def new_incarnation(node_id: str) -> str:
    """A fresh identity for this process: ``node_id`` plus a random boot id, unique across restarts.

    ``~`` may appear in Redis key names and hash tags (no braces, no spaces).
    """
    return f"{node_id}~{secrets.token_hex(4)}"


class NodeLiveness:
    """Heartbeat of this node incarnation plus the cluster-wide dead-incarnation sweep.

    Args:
        incarnation: this process's identity (:func:`new_incarnation`), the one its presence store
            indexes entries under.
        announce_leave: called for every removed entry of a dead node (publishes the ``leave`` push).
        on_revived: called when this node finds its own key expired (it was presumed dead, e.g. a long
            pause): it must re-add its connections' presence.
        stats: this node's snapshot (nodes.NodeDirectory.snapshot), written with every beat.
    """

    def __init__(
        self,
        client: StoreClient,
        presence: Presence,
        *,
        key_prefix: str,
        incarnation: str,
        announce_leave: Announce,
        on_revived: Callable[[], Awaitable[None]],
        ttl: float = 5.0,
        heartbeat_interval: float = 1.0,
        stats: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self._redis = client
        self._presence = presence
        self._prefix = key_prefix
        self.incarnation = incarnation
        self._announce_leave = announce_leave
        self._on_revived = on_revived
        self.ttl = ttl
        self.heartbeat_interval = heartbeat_interval
        self._stats = stats
        self._tasks: list[asyncio.Task[None]] = []
        self._sweep_lease = RedisLease(client, redis_keys.lease(key_prefix, "node-sweep"), ttl=max(ttl, 5.0))

    async def start(self) -> None:
        try:
            await self._beat(first=True)
        except REDIS_ERRORS:
            logger.warning("first heartbeat of node %s failed: Redis unreachable; retrying", self.incarnation)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_forever(), name="tidings-heartbeat"),
            loop.create_task(
                run_once_periodically(
                    self._sweep_lease, self.heartbeat_interval, self.sweep, name="node-sweep"
                ),
                name="tidings-node-sweep",
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        # Let the survivors sweep whatever this node leaves behind right away, not after the TTL.
        with contextlib.suppress(*REDIS_ERRORS):
            await self._redis.delete(
                redis_keys.node_alive(self._prefix, self.incarnation),
                redis_keys.node_stats(self._prefix, self.incarnation),
            )

    async def _beat(self, *, first: bool = False) -> None:
        alive = redis_keys.node_alive(self._prefix, self.incarnation)
        ttl_ms = int(self.ttl * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(alive, "1", px=ttl_ms, get=True)
            pipe.sadd(redis_keys.nodes(self._prefix), self.incarnation)
            if self._stats is not None:
                stats = redis_keys.node_stats(self._prefix, self.incarnation)
                fields: dict[Any, Any] = encode_stats(self._stats())  # redis-py's Mapping key is invariant
                pipe.hset(stats, mapping=fields)
                pipe.pexpire(stats, ttl_ms)
            previous = (await pipe.execute())[0]
        if previous is None and not first:
            logger.warning(
                "node %s was presumed dead (heartbeat key expired); re-announcing", self.incarnation
            )
            await self._on_revived()

    async def _heartbeat_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self._beat()
                if failing:
                    logger.info("heartbeat of node %s restored", self.incarnation)
                    failing = False
            except REDIS_ERRORS:
                if not failing:
                    logger.warning("heartbeat of node %s failing: Redis unreachable", self.incarnation)
                    failing = True

    async def sweep(self) -> None:
        """Bury every registered incarnation whose liveness key expired (run under the sweep lease)."""
        registered = await self._redis.smembers(redis_keys.nodes(self._prefix))
        for raw in registered:
            incarnation = raw.decode() if isinstance(raw, bytes) else str(raw)
            if incarnation == self.incarnation:
                continue
            if await self._redis.exists(redis_keys.node_alive(self._prefix, incarnation)):
                continue
            removed = await self._presence.remove_node(incarnation)
            for channel, member in removed:
                await self._announce_leave(channel, member)
            await self._redis.srem(redis_keys.nodes(self._prefix), incarnation)
            logger.info("node %s is gone: removed %d presence entries", incarnation, len(removed))
