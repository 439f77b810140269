"""Presence: who is connected to a channel, across every node (the contract).

Two implementations share the :class:`Presence` contract (tests/test_presence_store.py
runs over both): :class:`~tidings.server.cluster.presence_memory.InMemoryPresence` for a
single node and :class:`~tidings.server.cluster.presence_redis.RedisPresence` for a
cluster, which indexes each entry under the node incarnation that added it so that the
survivors can remove the entries of a process that died without a goodbye.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Member", "Presence"]


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
    Errors raise StoreUnavailable.
    """

    async def add(self, channel: str, member: Member) -> None: ...

    async def remove(self, channel: str, member: Member) -> None: ...

    async def members(self, channel: str) -> list[Member]: ...

    async def remove_node(self, incarnation: str) -> list[tuple[str, Member]]:
        """Remove every entry that the node incarnation ``incarnation`` added; return what was removed."""
