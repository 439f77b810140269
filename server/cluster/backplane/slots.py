"""Which Redis Cluster primary serves each of the 16384 hash slots (read with ``CLUSTER SLOTS``).

A channel's keys and its shard channel share the ``{channel}`` hash tag (keys.py), so one slot,
and one primary, serves all of a channel: its publish script, its history and its live traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.crc import key_slot
from redis.exceptions import RedisError

from tidings.server.cluster.backplane import BackplaneUnavailable
from tidings.server.cluster.backplane.resp import RespConnection
from tidings.server.cluster.redis_errors import REDIS_ERRORS
from tidings.server.cluster.redis_target import Address

__all__ = ["SLOTS", "SlotMap", "parse_cluster_slots", "slot_of"]

logger = logging.getLogger("tidings.backplane.redis")

SLOTS = 16384


def slot_of(name: str) -> int:
    """The hash slot of a key or shard channel name."""
    return int(key_slot(name.encode()))


def parse_cluster_slots(reply: Sequence[Any], default_host: str) -> list[tuple[int, int, Address]]:
    """``(first slot, last slot, primary)`` ranges of a ``CLUSTER SLOTS`` reply.

    A primary announced without a host (``""`` or ``"?"``) is on the host the reply came from.
    """
    ranges = []
    for entry in reply:
        first, last, primary = int(entry[0]), int(entry[1]), entry[2]
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        ranges.append((first, last, (host if host not in ("", "?") else default_host, int(primary[1]))))
    return ranges


class SlotMap:
    """The slot → primary map of one cluster, kept by reading it from any node that answers.

    Args:
        seeds: addresses from the URL; every primary seen later is asked as well.
        connect: opens a connection to an address.
        timeout: seconds a node may take to answer.
    """

    def __init__(
        self,
        seeds: Sequence[Address],
        connect: Callable[[Address], Awaitable[RespConnection]],
        *,
        timeout: float,
    ) -> None:
        self._seeds = list(seeds)
        self._connect = connect
        self._timeout = timeout
        self._owners: list[Address | None] = [None] * SLOTS
        self.primaries: frozenset[Address] = frozenset()
        self.version = 0  # bumped whenever the map changes

    @property
    def known(self) -> bool:
        return bool(self.primaries)

    def owner(self, name: str) -> Address:
        """The primary serving ``name``'s slot. Raises BackplaneUnavailable while no node has told us."""
        address = self._owners[slot_of(name)]
        if address is None:
            raise BackplaneUnavailable("the Redis Cluster slot map is not known yet")
        return address

    def learn(self, slot: int, address: Address) -> None:
        """A MOVED reply said ``address`` serves ``slot`` now."""
        if self._owners[slot] != address:
            self._owners[slot] = address
            self.primaries = frozenset(a for a in self._owners if a is not None)
            self.version += 1

    async def refresh(self) -> bool:
        """Read the map from the first node that answers (known primaries, then the seeds)."""
        candidates = list(dict.fromkeys([*sorted(self.primaries), *self._seeds]))
        for address in candidates:
            try:
                connection = await self._connect(address)
            except REDIS_ERRORS as exc:
                logger.debug("connecting to %s:%d for CLUSTER SLOTS failed: %r", *address, exc)
                continue
            try:
                async with asyncio.timeout(self._timeout):
                    reply = await connection.call("CLUSTER", "SLOTS")
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                logger.debug("CLUSTER SLOTS from %s:%d failed: %r", *address, exc)
                continue
            finally:
                connection.close()
            ranges = parse_cluster_slots(reply, address[0])
            owners: list[Address | None] = [None] * SLOTS
            for first, last, primary in ranges:
                owners[first : last + 1] = [primary] * (last - first + 1)
            if owners != self._owners:
                self._owners = owners
                self.primaries = frozenset(a for a in owners if a is not None)
                self.version += 1
            return True
        return False
