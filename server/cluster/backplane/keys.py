"""Every Redis key and pub/sub channel name, built from the key prefix in one place.

Keys that belong to one channel are hash-tagged with ``{channel}`` so that a
Lua script touching several of them runs on Redis Cluster (all in one slot).
Node-level keys are tagged with the node's incarnation (node id + boot id, see
liveness.py) for the same reason.
"""

from __future__ import annotations

__all__ = [
    "channel_from_pubsub",
    "channel_meta",
    "channel_pubsub",
    "channel_stream",
    "client_name",
    "inbox_items",
    "inbox_order",
    "inbox_seq",
    "inbox_unread",
    "job_progress",
    "jobs_counts",
    "jobs_dead",
    "jobs_delayed",
    "jobs_stream",
    "lease",
    "node_alive",
    "node_control",
    "node_presence",
    "node_stats",
    "nodes",
    "notification_dedupe",
    "presence",
    "room",
    "room_members",
    "topic_subscribers",
    "users",
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


def channel_from_pubsub(prefix: str, name: bytes) -> str | None:
    """The channel whose pub/sub name (:func:`channel_pubsub`) is ``name``; None if it is not one of ours."""
    head = prefix.encode() + b":{"
    if not (name.startswith(head) and name.endswith(b"}")):
        return None
    return name[len(head) : -1].decode("utf-8", "replace")


def client_name(prefix: str, node_id: str, role: str) -> str:
    """``CLIENT SETNAME`` of a node's connection (``role``: pubsub, commands), so ``CLIENT LIST`` tells whose.

    Redis client names may not hold spaces, so they become ``_``.
    """
    return f"{prefix}:node:{node_id}:{role}".replace(" ", "_")


def node_control(prefix: str, node_id: str) -> str:
    """A pub/sub channel that reaches one node only (targeted control messages)."""
    return f"{prefix}:node:{node_id}"


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
    """Set of the registered node incarnations (alive, or dead and not yet swept)."""
    return f"{prefix}:nodes"


def node_alive(prefix: str, incarnation: str) -> str:
    """A node incarnation's liveness key, refreshed by its heartbeat, expiring with a short TTL."""
    return f"{prefix}:node:{{{incarnation}}}:alive"


def node_stats(prefix: str, incarnation: str) -> str:
    """Hash of a node incarnation's numbers (cluster/nodes.py), written by its heartbeat with the same TTL."""
    return f"{prefix}:node:{{{incarnation}}}:stats"


def node_presence(prefix: str, incarnation: str) -> str:
    """Set of ``channel \\0 client`` entries a node incarnation added to presence (for dead-node clean-up)."""
    return f"{prefix}:node:{{{incarnation}}}:presence"


def lease(prefix: str, name: str) -> str:
    """A cluster-wide lease (jobs.Lease) for work that one node must do at a time."""
    return f"{prefix}:lease:{name}"


# --- notifications: per-user keys are tagged {user:<id>} (one slot per inbox, like the user's channel)


def inbox_order(prefix: str, user: str) -> str:
    """Sorted set ``notification id → sequence number`` of a user's inbox (newest last)."""
    return f"{prefix}:{{user:{user}}}:inbox"


def inbox_unread(prefix: str, user: str) -> str:
    """Sorted set of the unread subset of the inbox (same scores); ZCARD is the unread count."""
    return f"{prefix}:{{user:{user}}}:unread"


def inbox_items(prefix: str, user: str) -> str:
    """Hash ``notification id → notification`` (JSON) of a user's inbox."""
    return f"{prefix}:{{user:{user}}}:notifications"


def inbox_seq(prefix: str, user: str) -> str:
    """Counter giving each notification added to a user's inbox its sequence number."""
    return f"{prefix}:{{user:{user}}}:inbox-seq"


def topic_subscribers(prefix: str, topic: str) -> str:
    """Set of the user ids subscribed to a notification topic."""
    return f"{prefix}:{{topic:{topic}}}:subscribers"


def users(prefix: str) -> str:
    """Set of every known user id (connected or notified once): the audience of ``all``."""
    return f"{prefix}:users"


def notification_dedupe(prefix: str, dedupe_key: str) -> str:
    """A notify request's dedupe record (``dedupe_key`` of POST /api/notifications), with a TTL."""
    return f"{prefix}:notification-dedupe:{dedupe_key}"


# --- jobs: one slot ({jobs}) so that every job script may touch all of them


def jobs_stream(prefix: str) -> str:
    """The job stream with its consumer group (waiting and running jobs only; done ones are deleted)."""
    return f"{prefix}:{{jobs}}:stream"


def jobs_delayed(prefix: str) -> str:
    """Sorted set ``job → when to run (epoch seconds)``: scheduled jobs and retries after a backoff."""
    return f"{prefix}:{{jobs}}:delayed"


def jobs_dead(prefix: str) -> str:
    """The dead-letter stream: jobs given up on, with their last error."""
    return f"{prefix}:{{jobs}}:dead"


def jobs_counts(prefix: str) -> str:
    """Hash of job counters: ``enqueued``, ``done``, ``failed``, ``dead``."""
    return f"{prefix}:{{jobs}}:counts"


def job_progress(prefix: str, job_id: str) -> str:
    """A running job's checkpoint, so that a re-run after a crash resumes where it stopped."""
    return f"{prefix}:{{jobs}}:progress:{job_id}"
