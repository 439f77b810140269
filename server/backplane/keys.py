"""Every Redis key and pub/sub channel name, built from the key prefix in one place.

Keys that belong to one channel are hash-tagged with ``{channel}`` so that a
Lua script touching several of them runs on Redis Cluster (all in one slot).
Node-level keys are tagged with the node id for the same reason.
"""

from __future__ import annotations

__all__ = [
    "channel_meta",
    "channel_pubsub",
    "channel_stream",
    "lease",
    "node_alive",
    "node_presence",
    "nodes",
    "presence",
    "room",
    "room_members",
]


def channel_stream(prefix: str, channel: str) -> str:
    """The Stream holding a channel's history."""
    return f"{prefix}:{{{channel}}}:stream"


def channel_meta(prefix: str, channel: str) -> str:
    """Hash with the channel's ``epoch`` and ``offset`` (its top)."""
    return f"{prefix}:{{{channel}}}:meta"


def channel_pubsub(prefix: str, channel: str) -> str:
    """The pub/sub channel carrying a channel's live publications between nodes."""
    return f"{prefix}:{{{channel}}}"


def presence(prefix: str, channel: str) -> str:
    """Hash ``client id → member`` of the connections in a channel."""
    return f"{prefix}:{{{channel}}}:presence"


def room(prefix: str, name: str) -> str:
    """Hash of a room's settings (``private``); tagged like the room's channel."""
    return f"{prefix}:{{room:{name}}}:room"


def room_members(prefix: str, name: str) -> str:
    """Set of the user ids that may use a private room."""
    return f"{prefix}:{{room:{name}}}:members"


def nodes(prefix: str) -> str:
    """Set of the ids of registered nodes (alive, or dead and not yet swept)."""
    return f"{prefix}:nodes"


def node_alive(prefix: str, node_id: str) -> str:
    """A node's liveness key, refreshed by its heartbeat, expiring with a short TTL."""
    return f"{prefix}:node:{{{node_id}}}:alive"


def node_presence(prefix: str, node_id: str) -> str:
    """Set of ``channel \\0 client`` entries a node added to presence (for dead-node clean-up)."""
    return f"{prefix}:node:{{{node_id}}}:presence"


def lease(prefix: str, name: str) -> str:
    """A cluster-wide lease (jobs.Lease) for work that one node must do at a time."""
    return f"{prefix}:lease:{name}"
