"""Rooms: public or private, and who may read a private one.

The source of truth is a :class:`RoomDirectory`: Redis
(:class:`~tidings.server.cluster.rooms_redis.RedisRooms`), or memory on a single
node (:class:`~tidings.server.cluster.rooms_memory.InMemoryRooms`);
tests/test_rooms_store.py runs the contract over both.

Nodes keep a local cache of answers (:class:`CachedRooms`), and every node drops
a room's cached answers the moment the room changes: the node that changes it
publishes ``invalidate_room`` on the control channel (control.py), which is as
reliable as publications: its messages have offsets and a gap is repaired from
history. Cached answers also expire after ``cache_ttl`` as a last safety net.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Protocol

__all__ = ["CachedRooms", "RoomDirectory"]


class RoomDirectory(Protocol):
    """Room settings and private-room membership. Errors raise StoreUnavailable."""

    async def create(self, room: str, *, private: bool) -> None: ...

    async def add_member(self, room: str, user: str) -> None: ...

    async def remove_member(self, room: str, user: str) -> None: ...

    async def is_private(self, room: str) -> bool: ...

    async def is_member(self, room: str, user: str) -> bool: ...


class CachedRooms:
    """A node-local cache in front of a RoomDirectory, invalidated cluster-wide (see module docstring).

    Guarantees:
      * At most ``max_entries`` answers are kept (least recently used go first): a user asking about
        endless room names cannot grow the node's memory.
      * ``invalidate(room)`` forgets that room's answers in time proportional to them, not to the cache.
      * Callers missing the same room's setting at once share one directory read (a connect
        storm into a few hundred rooms asks once per room, not once per member); a caller that
        comes after an invalidation never shares a read that started before it.
      * An answer read from the directory while an invalidation went by is not cached, and
        ``generation`` changes with every invalidation, so a caller can tell that its answer
        may be stale and ask again.
    """

    def __init__(
        self, directory: RoomDirectory, *, cache_ttl: float = 30.0, max_entries: int = 10_000
    ) -> None:
        self.directory = directory
        self.cache_ttl = cache_ttl
        self.max_entries = max_entries
        self._private: OrderedDict[str, tuple[bool, float]] = OrderedDict()
        self._members: OrderedDict[tuple[str, str], tuple[bool, float]] = OrderedDict()
        self._users_of: dict[str, set[str]] = {}  # room → users with a cached answer (for invalidate)
        self._reading: dict[str, asyncio.Task[bool]] = {}  # room → its setting's read in flight
        self.generation = 0  # bumped by every invalidation: an answer read before one is not cached

    def __len__(self) -> int:
        return len(self._private) + len(self._members)

    def invalidate(self, room: str) -> None:
        """Forget everything cached about ``room`` (on a control message or a local change)."""
        self.generation += 1
        self._private.pop(room, None)
        self._reading.pop(room, None)  # a read under way may be stale: later callers read anew
        for user in self._users_of.pop(room, ()):
            self._members.pop((room, user), None)

    def clear(self) -> None:
        self.generation += 1
        self._private.clear()
        self._reading.clear()
        self._members.clear()
        self._users_of.clear()

    async def may_access(self, room: str, user: str) -> bool:
        """Whether ``user`` may read or write ``room``: public rooms are open, private ones need membership."""
        now = time.monotonic()
        generation = self.generation
        cached = self._private.get(room)
        if cached is None or cached[1] < now:
            cached = (await self._read_private(room), now + self.cache_ttl)
            if generation == self.generation:
                self._private[room] = cached
                self._private.move_to_end(room)
                self._evict()
        else:
            self._private.move_to_end(room)
        if not cached[0]:
            return True
        key = (room, user)
        member = self._members.get(key)
        if member is None or member[1] < now:
            member = (await self.directory.is_member(room, user), now + self.cache_ttl)
            if generation == self.generation:
                self._members[key] = member
                self._users_of.setdefault(room, set()).add(user)
                self._members.move_to_end(key)
                self._evict()
        else:
            self._members.move_to_end(key)
        return member[0]

    async def _read_private(self, room: str) -> bool:
        # One read per room in flight, in a task of its own: a caller cancelled meanwhile
        # (its client left) does not cancel the others' answer.
        reading = self._reading.get(room)
        if reading is None:
            reading = self._reading[room] = asyncio.get_running_loop().create_task(
                self.directory.is_private(room)
            )
            reading.add_done_callback(lambda done: self._forget_read(room, done))
        return await asyncio.shield(reading)

    def _forget_read(self, room: str, done: asyncio.Task[bool]) -> None:
        if self._reading.get(room) is done:
            del self._reading[room]
        if not done.cancelled():
            done.exception()  # retrieved: a failed read is raised to its callers, never logged as lost

    def _evict(self) -> None:
        while len(self._private) + len(self._members) > self.max_entries:
            if self._members and (not self._private or len(self._members) >= len(self._private)):
                (room, user), _ = self._members.popitem(last=False)
                users = self._users_of.get(room)
                if users is not None:
                    users.discard(user)
                    if not users:
                        del self._users_of[room]
            else:
                self._private.popitem(last=False)
