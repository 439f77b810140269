"""Rooms in Redis: the cluster :class:`~tidings.server.cluster.rooms.RoomDirectory`."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.redis_client import StoreClient
from tidings.server.cluster.redis_errors import redis_errors

__all__ = ["RedisRooms"]

T = TypeVar("T")


class RedisRooms:
    """Rooms in Redis: a settings hash and a member set per room (hash-tagged like the room's channel)."""

    def __init__(self, client: StoreClient, *, key_prefix: str) -> None:
        self._redis = client
        self._prefix = key_prefix

    async def create(self, room: str, *, private: bool) -> None:
        await self._call(self._redis.hset(redis_keys.room(self._prefix, room), "private", int(private)))

    async def add_member(self, room: str, user: str) -> None:
        await self._call(self._redis.sadd(redis_keys.room_members(self._prefix, room), user))

    async def remove_member(self, room: str, user: str) -> None:
        await self._call(self._redis.srem(redis_keys.room_members(self._prefix, room), user))

    async def is_private(self, room: str) -> bool:
        value = await self._call(self._redis.hget(redis_keys.room(self._prefix, room), "private"))
        return value in (b"1", "1")

    async def is_member(self, room: str, user: str) -> bool:
        found = await self._call(self._redis.sismember(redis_keys.room_members(self._prefix, room), user))
        return bool(found)

    async def _call(self, awaitable: Awaitable[T]) -> T:
        with redis_errors("room directory unavailable"):
            return await awaitable
