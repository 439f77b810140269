"""Rooms within one process: the single-node :class:`~tidings.server.cluster.rooms.RoomDirectory`."""

from __future__ import annotations

__all__ = ["InMemoryRooms"]


class InMemoryRooms:
    """The RoomDirectory contract within one process (single node, and tests)."""

    def __init__(self) -> None:
        self._private: set[str] = set()
        self._members: dict[str, set[str]] = {}

    async def create(self, room: str, *, private: bool) -> None:
        if private:
            self._private.add(room)
        else:
            self._private.discard(room)

    async def add_member(self, room: str, user: str) -> None:
        self._members.setdefault(room, set()).add(user)

    async def remove_member(self, room: str, user: str) -> None:
        self._members.get(room, set()).discard(user)

    async def is_private(self, room: str) -> bool:
        return room in self._private

    async def is_member(self, room: str, user: str) -> bool:
        return user in self._members.get(room, set())
