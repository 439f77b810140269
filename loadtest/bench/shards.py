"""How a run's rooms and Redis CPU spread over the shards of a Redis Cluster (``--redis-pid p1,p2,...``).

The benchmark knows the shards only by their servers' pids, given in the order of their slot
ranges, and assumes the even split that ``LocalCluster`` (server/devcluster/redis_cluster.py)
and ``redis-cli --cluster create`` make: shard ``i`` of ``n`` serves slots
``i * 16384 // n`` to ``(i + 1) * 16384 // n - 1``. A room belongs to the shard of its pub/sub
name (``<prefix>:{<channel>}``, keys.channel_pubsub): the hash tag puts the room's publish
script, history and live traffic on that one shard.

Everything here is pure: :func:`shard_figures` turns counts and CPU seconds into the figures
the benchmark reports (per shard, in total, and the balance between shards).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tidings.server.cluster.backplane.keys import channel_pubsub
from tidings.server.cluster.backplane.slots import SLOTS, slot_of

__all__ = ["balance_pct", "shard_figures", "shard_of_channel", "shard_of_slot"]


def shard_of_slot(slot: int, shards: int) -> int:
    """The index of the shard serving ``slot`` under an even split of the slots over ``shards``."""
    if not 0 <= slot < SLOTS or shards < 1:
        raise ValueError(f"slot {slot} of {shards} shard(s)")
    return next(i for i in range(shards) if slot < (i + 1) * SLOTS // shards)


def shard_of_channel(prefix: str, channel: str, shards: int) -> int:
    """The shard serving ``channel``: the one owning the slot of its pub/sub name."""
    return shard_of_slot(slot_of(channel_pubsub(prefix, channel)), shards)


def balance_pct(values: Sequence[float]) -> float | None:
    """max / min - 1, in %: 0 when every shard did the same; None when one did nothing."""
    if not values or min(values) <= 0:
        return None
    return round((max(values) / min(values) - 1) * 100, 1)


def shard_figures(
    prefix: str,
    published_by_channel: Mapping[str, int],
    redis_pids: Sequence[int],
    redis_cpu: Mapping[int, float],
    idle_cpu_per_s: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """Rooms, publications and Redis CPU per shard, and the balance between the shards.

    Args:
        prefix: the nodes' key prefix (``TIDINGS_KEY_PREFIX``).
        published_by_channel: acknowledged publications of each room's channel in the window.
        redis_pids: the shards' server pids, in the order of their slot ranges.
        redis_cpu: CPU seconds each pid used in the window (missing when a server was gone).
        idle_cpu_per_s: CPU seconds per second each pid used while idle, before the window.
    """
    shards = len(redis_pids)
    rooms = [0] * shards
    published = [0] * shards
    for channel, count in published_by_channel.items():
        shard = shard_of_channel(prefix, channel, shards)
        rooms[shard] += 1
        published[shard] += count
    cpu = [redis_cpu.get(pid) for pid in redis_pids]
    idle = idle_cpu_per_s or {}
    per_shard: list[dict[str, Any]] = []
    known = [c for c in cpu if c is not None]
    mean = sum(known) / len(known) if known and len(known) == shards else None
    for index, pid in enumerate(redis_pids):
        seconds = cpu[index]
        per_shard.append(
            {
                "pid": pid,
                "rooms": rooms[index],
                "published": published[index],
                "cpu_s": round(seconds, 3) if seconds is not None else None,
                # this shard's CPU against the mean of all shards
                "vs_mean_pct": round((seconds / mean - 1) * 100, 1) if seconds is not None and mean else None,
                "idle_ms_per_s": round(idle[pid] * 1e3, 2) if pid in idle else None,
                # its CPU per publication of its own rooms: the cost, with the rooms' spread taken out
                "cpu_us_per_publication": (
                    round(seconds * 1e6 / published[index], 2)
                    if seconds is not None and published[index]
                    else None
                ),
            }
        )
    return {
        "redis_shards": shards,
        "shards": per_shard,
        "shard_rooms_balance_pct": balance_pct(rooms),
        "shard_cpu_balance_pct": balance_pct(known) if len(known) == shards else None,
    }
