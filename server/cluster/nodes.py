"""The cluster's nodes at a glance (``GET /api/nodes``, the ops page at ``/admin``).

Each node's heartbeat (liveness.py) also writes a small stats hash for its incarnation,
with the same TTL as its liveness key: a node that dies leaves the list when its key
expires (5 s by default), without anyone sweeping it. The numbers are the node's own
counters and gauges as ``/metrics`` shows them; a reader computes rates from the
deltas of counters between two ``updated`` times. Without Redis the node lists itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.redis_client import StoreClient
from tidings.server.cluster.redis_errors import redis_errors

__all__ = ["COUNTERS", "GAUGES", "NodeDirectory", "RedisNodeDirectory", "StatsSource"]

GAUGES = ("connections", "channels", "subscriptions")
"""Numbers of now: connected sessions, channels with a local subscriber, subscriptions."""

COUNTERS = ("published", "publications", "deliveries", "slow_disconnects")
"""Totals since the node started: publications sent, publications received (for local subscribers),
frames delivered, 4008 closes."""

StatsSource = Callable[[], Mapping[str, int]]
"""Reads the node's numbers (every name of :data:`GAUGES` and :data:`COUNTERS`) at call time."""


class NodeDirectory:
    """This node alone (no Redis): the list is this node's current snapshot.

    Args:
        node_id: the node's configured id.
        incarnation: this process's identity (liveness.new_incarnation).
        stats: reads the numbers of the snapshot.
    """

    def __init__(self, node_id: str, incarnation: str, stats: StatsSource) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self._stats = stats
        self.started = time.time()

    def snapshot(self) -> dict[str, Any]:
        """This node now: ids, start and snapshot times (epoch seconds) and every number."""
        numbers = self._stats()
        return {
            "node": self.node_id,
            "incarnation": self.incarnation,
            "started": round(self.started, 3),
            "updated": round(time.time(), 3),
            **{name: int(numbers[name]) for name in (*GAUGES, *COUNTERS)},
        }

    async def live(self) -> list[dict[str, Any]]:
        """The nodes alive now, sorted by node id then incarnation."""
        return [self.snapshot()]


class RedisNodeDirectory(NodeDirectory):
    """The nodes whose heartbeat stats hash has not expired, read from Redis."""

    def __init__(
        self, client: StoreClient, *, key_prefix: str, node_id: str, incarnation: str, stats: StatsSource
    ) -> None:
        super().__init__(node_id, incarnation, stats)
        self._redis = client
        self._prefix = key_prefix

    async def live(self) -> list[dict[str, Any]]:
        with redis_errors("node list failed"):
            registered = sorted(
                _text(raw) for raw in await self._redis.smembers(redis_keys.nodes(self._prefix))
            )
            async with self._redis.pipeline(transaction=False) as pipe:
                for incarnation in registered:
                    pipe.hgetall(redis_keys.node_stats(self._prefix, incarnation))
                hashes = await pipe.execute()
        found = [decode_stats(incarnation, raw) for incarnation, raw in zip(registered, hashes, strict=True)]
        return sorted(
            (node for node in found if node is not None), key=lambda n: (n["node"], n["incarnation"])
        )


def encode_stats(snapshot: Mapping[str, Any]) -> dict[str, str]:
    """A snapshot as the fields of its Redis hash (the incarnation is in the key)."""
    return {name: str(value) for name, value in snapshot.items() if name != "incarnation"}


def decode_stats(incarnation: str, raw: Mapping[Any, Any]) -> dict[str, Any] | None:
    """A stats hash read back; None when it expired (or is not readable: a node of another version)."""
    fields = {_text(key): _text(value) for key, value in raw.items()}
    try:
        return {
            "node": fields["node"],
            "incarnation": incarnation,
            "started": float(fields["started"]),
            "updated": float(fields["updated"]),
            **{name: int(fields[name]) for name in (*GAUGES, *COUNTERS)},
        }
    except (KeyError, ValueError):
        return None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
