"""Presence: who is connected to a channel, across every node.

Two implementations share one contract: :class:`InMemoryPresence` (single node)
and :class:`RedisPresence` (cluster). In Redis each channel has a hash
``client → member``, and each node incarnation (one process: node id + boot
id, see ``liveness``) an index of the entries it added, so that when a process
dies without a goodbye its entries can be found and removed by the survivors
(``remove_node``, run once across the cluster by ``liveness``) — even when a new
process already runs under the same node id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tidings.server.cluster.backplane import BackplaneUnavailable
from tidings.server.cluster.backplane import keys as redis_keys

__all__ = ["InMemoryPresence", "Member", "Presence", "RedisPresence"]


@dataclass(frozen=True, slots=True)
class Member:
    """One connection in a channel."""

    user: str
    client: str
    node: str
    info: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> dict[str, Any]:
        return {"user": self.user, "client": self.client, "node": self.node, "info": self.info}

    @classmethod
    def decode(cls, value: dict[str, Any]) -> Member:
        return cls(
            str(value["user"]), str(value["client"]), str(value["node"]), dict(value.get("info") or {})
        )


class Presence(Protocol):
    """Channel membership of live connections.

    Guarantees: ``members`` lists each connection once; an entry added by a node
    process that dies is removed by ``remove_node`` of its incarnation (called
    once, by one survivor), whatever runs under its node id since.
    Errors raise BackplaneUnavailable.
    """

    async def add(self, channel: str, member: Member) -> None: ...

    async def remove(self, channel: str, member: Member) -> None: ...

    async def members(self, channel: str) -> list[Member]: ...

    async def remove_node(self, incarnation: str) -> list[tuple[str, Member]]:
        """Remove every entry that the node incarnation ``incarnation`` added; return what was removed."""


class InMemoryPresence:
    """Presence within one process (one incarnation per node: ``remove_node`` takes the node id)."""

    def __init__(self) -> None:
        self._channels: dict[str, dict[str, Member]] = {}

    async def add(self, channel: str, member: Member) -> None:
        self._channels.setdefault(channel, {})[member.client] = member

    async def remove(self, channel: str, member: Member) -> None:
        members = self._channels.get(channel)
        if members is not None:
            members.pop(member.client, None)
            if not members:
                del self._channels[channel]

    async def members(self, channel: str) -> list[Member]:
        return list(self._channels.get(channel, {}).values())

    async def remove_node(self, incarnation: str) -> list[tuple[str, Member]]:
        removed = []
        for channel, members in list(self._channels.items()):
            for client, member in list(members.items()):
                if member.node == incarnation:
                    del members[client]
                    removed.append((channel, member))
            if not members:
                del self._channels[channel]
        return removed


_SEPARATOR = "\x00"


class RedisPresence:
    """Presence in Redis: a hash per channel and an index per node incarnation (for dead-node clean-up).

    Args:
        incarnation: this process's identity in the cluster (``liveness.new_incarnation``): the entries
            it adds are indexed under it, not under ``member.node``, so that a process restarted under
            the same node id never adopts, nor hides from the sweep, the entries of the one that died.
    """

    def __init__(self, client: aioredis.Redis, *, key_prefix: str, incarnation: str) -> None:
        self._redis = client
        self._prefix = key_prefix
        self._index = redis_keys.node_presence(key_prefix, incarnation)

    async def add(self, channel: str, member: Member) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(
                    redis_keys.presence(self._prefix, channel), member.client, msgpack.packb(member.encode())
                )
                pipe.sadd(self._index, channel + _SEPARATOR + member.client)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("presence add failed") from exc

    async def remove(self, channel: str, member: Member) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hdel(redis_keys.presence(self._prefix, channel), member.client)
                pipe.srem(self._index, channel + _SEPARATOR + member.client)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("presence remove failed") from exc

    async def members(self, channel: str) -> list[Member]:
        try:
            entries = await self._redis.hgetall(redis_keys.presence(self._prefix, channel))
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("presence read failed") from exc
        return [Member.decode(msgpack.unpackb(value)) for _, value in sorted(entries.items())]

    async def remove_node(self, incarnation: str) -> list[tuple[str, Member]]:
        index = redis_keys.node_presence(self._prefix, incarnation)
        try:
            entries = await self._redis.smembers(index)
            removed: list[tuple[str, Member]] = []
            for entry in entries:
                text = entry.decode() if isinstance(entry, bytes) else entry
                channel, _, client = text.partition(_SEPARATOR)
                key = redis_keys.presence(self._prefix, channel)
                value = await self._redis.hget(key, client)
                # HDEL's count tells whether this call removed it: a leave is announced at most once.
                if value is not None and await self._redis.hdel(key, client):
                    removed.append((channel, Member.decode(msgpack.unpackb(value))))
            await self._redis.delete(index)
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("presence clean-up failed") from exc
        return removed
