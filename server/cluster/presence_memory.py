"""Presence within one process: the single-node :class:`~tidings.server.cluster.presence.Presence`."""

from __future__ import annotations

from tidings.server.cluster.presence import Member

__all__ = ["InMemoryPresence"]


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
