"""What Tidings keeps in Redis, in bytes: per connection and subscription, per history entry, per notification.

    python -m loadtest.run_cluster --nodes 2 -- python -m loadtest.redis_memory
    python -m loadtest.run_cluster --nodes 2 -- python -m loadtest.redis_memory --payload 1000 --rooms 200 --connections 1000

Run against fresh nodes (run_cluster appends ``--nodes`` and ``--redis-pid``; the servers'
ports are read from their command lines). At each step it reads Redis's ``used_memory`` less
``mem_clients_normal`` (the connections' buffers, which grow and shrink with traffic, not
with what is stored), summed over the servers:

1. before anything; after opening ``--connections`` connections in ``--rooms`` rooms (each
   also subscribed to its own ``user:`` channel, as every connection is): bytes per
   connection, and ``MEMORY USAGE`` by kind of key (hash tags folded to ``{}``);
2. after one publication in each of the first ``--history-rooms`` rooms (the first creates
   the channel's stream) and after ``--per-room`` more: bytes per history entry, against
   ``--payload`` bytes of padding in each message's data;
3. (on one server) with a prefix of its own, ``--per-user`` notifications of about ``--payload`` bytes
   added to each of 1,000 inboxes through the nodes' own store (RedisNotificationStore):
   bytes per inbox and per notification.

Prints one JSON object. Everything listens on 127.0.0.1; publishing is paced and bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python loadtest/redis_memory.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.bench import driver
from loadtest.bench.tidings_adapter import BenchOptions, TidingsAdapter
from tidings.server.cluster.redis_client import close_store_client, store_client
from tidings.server.devcluster.resp import command, text
from tidings.server.notify.store_redis import RedisNotificationStore

__all__ = ["main", "server_port"]

DRAIN_TIMEOUT = 60.0


def server_port(pid: int) -> int:
    """The port a Valkey/Redis server listens on, from its (retitled or original) command line."""
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        line = fh.read().decode(errors="replace")
    found = re.search(r"127\.0\.0\.1:(\d+)", line) or re.search(r"--port\x00(\d+)", line)
    if found is None:
        raise ValueError(f"no port in the command line of pid {pid}: {line!r}")
    return int(found.group(1))


def used_memory(ports: Sequence[int]) -> int:
    """``used_memory`` less the clients' buffers (``mem_clients_normal``), summed over the servers."""
    total = 0
    for port in ports:
        lines = text(command(port, "INFO", "memory")).splitlines()
        info = dict(line.split(":", 1) for line in lines if ":" in line)
        total += int(info["used_memory"]) - int(info["mem_clients_normal"])
    return total


def usage_by_kind(ports: Sequence[int]) -> dict[str, dict[str, int]]:
    """``MEMORY USAGE`` of every key, summed by the key's shape (hash tags folded to ``{}``)."""
    kinds: dict[str, dict[str, int]] = {}
    for port in ports:
        cursor = "0"
        while True:
            reply = command(port, "SCAN", cursor, "COUNT", 1000)
            assert isinstance(reply, list) and isinstance(reply[0], str) and isinstance(reply[1], list)
            cursor = reply[0]
            for key in reply[1]:
                assert isinstance(key, str)
                usage = command(port, "MEMORY", "USAGE", key, "SAMPLES", "0")
                kind = kinds.setdefault(re.sub(r"\{[^}]*\}", "{}", key), {"keys": 0, "bytes": 0})
                kind["keys"] += 1
                kind["bytes"] += usage if isinstance(usage, int) else 0
            if cursor == "0":
                return dict(sorted(kinds.items()))
    return kinds


async def publish_round(adapter: TidingsAdapter, rooms: int, rounds: int, pause: float) -> None:
    """``rounds`` times, one publication in each of the first ``rooms`` rooms; then wait for every delivery."""
    first: dict[int, Any] = {}
    for publisher in adapter.publishers:
        if publisher.room < rooms:
            first.setdefault(publisher.room, publisher)
    for _ in range(rounds):
        for publisher in first.values():
            adapter.publish_one(publisher)
        await asyncio.sleep(pause)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        if adapter.delivered_all():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"deliveries still missing after {DRAIN_TIMEOUT:g} s")


async def inboxes(url: str, per_user: int, size: int) -> dict[str, Any]:
    """Bytes per inbox and per notification, through the store the nodes use (its own key prefix)."""
    client = store_client(url)
    store = RedisNotificationStore(client, key_prefix="memory-probe")
    users = [f"probe-{i}" for i in range(1000)]
    ports = [int(url.rsplit(":", 1)[1].split("/", 1)[0])]

    def encoded(n: int) -> str:
        body = {"id": f"n{n:012d}", "topic": "orders", "data": {"text": "x" * size}, "ts": 1760000000000 + n}
        return json.dumps(body, separators=(",", ":"))

    try:
        start = used_memory(ports)
        await store.add(users, "n0", encoded(0))
        one = used_memory(ports)
        for n in range(1, per_user):
            await store.add(users, f"n{n:012d}", encoded(n))
        full = used_memory(ports)
    finally:
        await close_store_client(client)
    per_notification = (full - one) / (len(users) * (per_user - 1))
    return {
        "notification_json_bytes": len(encoded(1)),
        "first_notification_per_inbox_bytes": round((one - start) / len(users)),
        "per_notification_bytes": round(per_notification),
        "per_notification_over_json_bytes": round(per_notification - len(encoded(1))),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pids = [int(p) for p in args.redis_pid.split(",")]
    ports = [server_port(pid) for pid in pids]
    options = BenchOptions(
        nodes=args.nodes,
        secret=os.environ.get("TIDINGS_JWT_SECRET"),
        connections=args.connections,
        rooms=args.rooms,
        publish_from="members",
        payload=args.payload,
    )
    adapter = TidingsAdapter(options)
    empty = used_memory(ports)
    await adapter.open_all()
    await driver.settle(adapter.pids, 1.0, 60.0)
    opened = used_memory(ports)
    kinds = usage_by_kind(ports)
    await publish_round(adapter, args.history_rooms, 1, args.pause)
    first = used_memory(ports)
    await publish_round(adapter, args.history_rooms, args.per_room, args.pause)
    full = used_memory(ports)
    # Before closing: once the connections go, the nodes free their presence while we would measure.
    inbox = (
        await inboxes(f"redis://127.0.0.1:{ports[0]}/0", args.per_user, args.payload)
        if len(ports) == 1
        else None
    )
    for ws in adapter.sockets:
        ws.close()
    await asyncio.sleep(0.5)
    entries = args.history_rooms * args.per_room
    result: dict[str, Any] = {
        "connections": args.connections,
        "rooms": args.rooms,
        "per_connection_bytes": round((opened - empty) / args.connections),
        "keys_after_opening": kinds,
        "first_publication_per_channel_bytes": round((first - opened) / args.history_rooms),
        "payload_padding_bytes": args.payload,
        "per_history_entry_bytes": round((full - first) / entries),
        "per_history_entry_over_padding_bytes": round((full - first) / entries - args.payload),
    }
    if inbox is not None:
        result["inbox"] = inbox
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", nargs="+", required=True)
    parser.add_argument("--redis-pid", required=True, help="the Redis server pid(s), comma-separated")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--history-rooms", type=int, default=200, help="rooms published to (200)")
    parser.add_argument("--per-room", type=int, default=100, help="history entries per room (100)")
    parser.add_argument("--per-user", type=int, default=50, help="notifications per inbox (50)")
    parser.add_argument("--payload", type=int, default=200, help="bytes of padding per message (200)")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between rounds of publications")
    args = parser.parse_args(argv)
    if args.connections < args.rooms or not 1 <= args.history_rooms <= args.rooms:
        parser.error("--connections at least --rooms, at least --history-rooms")
    if not 1 <= args.per_room <= 1000 or not 2 <= args.per_user <= 1000 or args.pause <= 0:
        parser.error("--per-room 1-1000, --per-user 2-1000, --pause above 0")
    result = driver.run_on_uvloop(lambda: run(args))
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
