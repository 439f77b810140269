"""Presence in Redis: the cluster :class:`~tidings.server.cluster.presence.Presence`.

Each channel has a hash ``client → member``, and each node incarnation (one
process: node id + boot id, see ``liveness``) an index of the entries it added,
so that when a process dies without a goodbye its entries can be found and
removed by the survivors (``remove_node``, run once across the cluster by
``liveness``) — even when a new process already runs under the same node id.
"""

from __future__ import annotations

import msgpack

from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.backplane.pipeline import Commands
from tidings.server.cluster.presence import Member
from tidings.server.cluster.redis_client import StoreClient
from tidings.server.cluster.redis_errors import redis_errors

__all__ = ["RedisPresence"]

_SEPARATOR = "\x00"


class RedisPresence:
    """Presence in Redis: a hash per channel and an index per node incarnation (for dead-node clean-up).

    Args:
        incarnation: this process's identity in the cluster (``liveness.new_incarnation``): the entries
            it adds are indexed under it, not under ``member.node``, so that a process restarted under
            the same node id never adopts, nor hides from the sweep, the entries of the one that died.
    """

    def __init__(
        self, client: StoreClient, *, key_prefix: str, incarnation: str, commands: Commands | None = None
    ) -> None:
        self._redis = client
        self._commands = commands
        self._prefix = key_prefix
        self._index = redis_keys.node_presence(key_prefix, incarnation)

    async def add(self, channel: str, member: Member) -> None:
        if self._commands is not None:  # shares a round trip with the other connects of this loop turn
            key, entry = redis_keys.presence(self._prefix, channel), channel + _SEPARATOR + member.client
            with redis_errors("presence add failed"):
                await self._commands.call_all(
                    [
                        ("HSET", key, member.client, msgpack.packb(member.encode())),
                        ("SADD", self._index, entry),
                    ]
                )
            return
        with redis_errors("presence add failed"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(
                    redis_keys.presence(self._prefix, channel), member.client, msgpack.packb(member.encode())
                )
                pipe.sadd(self._index, channel + _SEPARATOR + member.client)
                await pipe.execute()

    async def remove(self, channel: str, member: Member) -> None:
        if self._commands is not None:
            key, entry = redis_keys.presence(self._prefix, channel), channel + _SEPARATOR + member.client
            with redis_errors("presence remove failed"):
                await self._commands.call_all([("HDEL", key, member.client), ("SREM", self._index, entry)])
            return
        with redis_errors("presence remove failed"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hdel(redis_keys.presence(self._prefix, channel), member.client)
                pipe.srem(self._index, channel + _SEPARATOR + member.client)
                await pipe.execute()

    async def members(self, channel: str) -> list[Member]:
        with redis_errors("presence read failed"):
            entries = await self._redis.hgetall(redis_keys.presence(self._prefix, channel))
        return [Member.decode(msgpack.unpackb(value)) for _, value in sorted(entries.items())]

    async def remove_node(self, incarnation: str) -> list[tuple[str, Member]]:
        index = redis_keys.node_presence(self._prefix, incarnation)
        with redis_errors("presence clean-up failed"):
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
        return removed
