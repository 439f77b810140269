"""The fan-out benchmark: many WebSocket connections over the nodes, one or many rooms, measured from /proc.

    python -m loadtest.fanout --scenario steady --nodes http://127.0.0.1:8001 http://127.0.0.1:8002
    python loadtest/fanout.py --connections 2000 --window 16 --duration 10 --nodes URL [URL ...]

It opens N connections spread round-robin over the node URLs (a load balancer URL
works too: each connection learns its node from the connect reply), puts them in R
rooms of N/R members (members of a room alternate between nodes, so fan-out crosses
the backplane), then publishes for ``--duration`` seconds, either at ``--rate``
messages per second per publisher, or as fast as the node acknowledges with
``--window`` publishes in flight per publisher. Publishers are one extra connection
per room (``--publish-from dedicated``) or every member (``members``).

Measured: sustained deliveries per second, publish→receipt latency (the publisher's
``perf_counter`` travels in the message; publisher and receivers share this process),
loss, duplicates and reordering per (publisher node, receiver node) pair, the nodes'
CPU seconds (utime + stime from /proc/<pid>/stat) over the publishing window divided
by deliveries, and the nodes' RSS growth per connection (VmRSS before and after
opening the connections). The node pids come from ``--pids`` or from the sockets
listening on each URL's port (/proc/net/tcp; needs the same user or root).

Prints one JSON line on stdout and a human table on stderr. Exit status: 0, or 1
when anything was lost, duplicated or reordered. The bench's own CPU is reported
(``bench_cpu_s``): when it nears the wall time, the bench, not the server, was the
limit, and the latency figures are the bench's.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: python loadtest/fanout.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from loadtest.benchkit import (
    CpuSnapshot,
    latency_ms,
    per,
    publish_for,
    raise_open_file_limit,
)
from loadtest.fastws import FastWebSocket, open_websocket
from loadtest.procstat import cpu_of, listener_pids, rss_of

__all__ = ["SCENARIOS", "Bench", "BenchOptions", "main", "run"]

SCENARIOS: dict[str, dict[str, Any]] = {
    # DESIGN.md / issue 9 targets: ≤ 8 µs CPU per delivery, p99 ≤ 15 ms, zero loss.
    "steady": {"connections": 1000, "rooms": 1, "publish_from": "dedicated", "rate": 50.0, "duration": 15.0},
    # As fast as the node acknowledges, 16 in flight: ≤ 3.5 µs per delivery with coalesced frames.
    "burst": {
        "connections": 1000,
        "rooms": 1,
        "publish_from": "dedicated",
        "rate": 0.0,
        "window": 16,
        "duration": 15.0,
    },
    # 200 rooms x 5 members, each member 1 msg/s: ≤ 200 µs per published message.
    "rooms": {"connections": 1000, "rooms": 200, "publish_from": "members", "rate": 1.0, "duration": 15.0},
    # 5,000 idle connections: ≤ 20 KiB RSS per connection.
    "idle": {"connections": 5000, "rooms": 0, "idle": True, "duration": 0.0},
}


@dataclass
class BenchOptions:
    nodes: list[str]
    connections: int = 100
    rooms: int = 1
    publish_from: str = "dedicated"  # "dedicated": one extra connection per room; "members": every member
    rate: float = 50.0  # messages/s per publisher; 0 = as fast as acknowledged, with ``window`` in flight
    window: int = 16
    duration: float = 5.0
    drain: float = 10.0  # seconds to wait for the last deliveries
    idle: bool = False
    codec: str = "json"
    payload: int = 0  # bytes of padding in each message
    secret: str | None = None
    pids: list[int] | None = None
    redis_pids: list[int] | None = None  # reported apart: the backplane's share, not the nodes'
    connect_concurrency: int = 100
    slow_readers: int = 0  # connections in the room that never read (they must be cut off, not slow others)
    settle: float = 1.0  # at least this long between opening and measuring; then until the nodes are quiet
    max_settle: float = 120.0  # ... but no longer than this
    scenario: str = "custom"


class _Receiver:
    """One subscribed connection's accounting. Offsets of a room arrive in order: O(1) per delivery."""

    __slots__ = ("duplicates", "gaps", "highest", "node", "received", "reordered", "room", "start")

    def __init__(self, node: int, room: int, start: int) -> None:
        self.node = node
        self.room = room
        self.start = start
        self.highest = start
        self.gaps: set[int] = set()
        self.received = 0
        self.duplicates = 0
        self.reordered = 0


@dataclass
class _Room:
    channel: str
    acked: dict[int, int] = field(default_factory=dict)  # offset -> publisher node index
    members_by_node: dict[int, int] = field(default_factory=dict)


@dataclass
class _Publisher:
    ws: FastWebSocket
    node: int
    room: int
    pending: dict[int, float] = field(default_factory=dict)  # command id -> sent at
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(2))
    window: asyncio.Semaphore | None = None
    errors: int = 0


class Bench:
    """One benchmark run against running nodes."""

    def __init__(self, options: BenchOptions) -> None:
        self.o = options
        self.run_id = secrets.token_hex(3)
        self.subprotocol = "tidings.msgpack" if options.codec == "msgpack" else "tidings.json"
        self.node_ids: dict[str, int] = {}
        self.rooms: list[_Room] = []
        self.receivers: list[_Receiver] = []
        self.publishers: list[_Publisher] = []
        self.sockets: list[FastWebSocket] = []
        self.latencies: list[float] = []
        self.publication_frames = 0  # frames that carried publications: deliveries / frames shows coalescing
        self.delivered_pairs: dict[tuple[int, int], int] = {}
        self.first_publish = 0.0
        self.last_receipt = 0.0
        self.published = 0
        self.publish_errors = 0
        self.closed_by_server: dict[int, int] = {}
        self.padding = "x" * options.payload
        self._decoded: dict[bytes, list[Any]] = {}
        self.other_pushes: dict[str, int] = {}  # pushes that are not publications (join, leave, ...)

    # --- connections -----------------------------------------------------------------------------

    async def token(self, user: str, base_url: str) -> str:
        if self.o.secret:
            from tidings.server.gateway.auth import issue_token

            return issue_token(user, self.o.secret, ttl=3600)
        import httpx  # dev mode: POST /api/dev/token (TIDINGS_DEV=1, as `tidings up` sets)

        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            response = await client.post(f"{base_url}/api/dev/token", json={"user": user})
            response.raise_for_status()
            return str(response.json()["token"])

    async def too_slow_closes(self) -> int:
        """Connections the nodes closed with 4008 ("too slow"), from their /metrics."""
        import httpx

        total = 0
        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            for node in self.o.nodes:
                response = await client.get(f"{_urls(node)[0]}/metrics")
                for line in response.text.splitlines():
                    if line.startswith('tidings_disconnects_total{code="4008"}'):
                        total += int(float(line.split()[-1]))
        return total

    def encode(self, message: dict[str, Any]) -> str | bytes:
        if self.o.codec == "msgpack":
            return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]
        return json.dumps(message, separators=(",", ":"))

    def decode(self, payload: bytes, text: bool = True) -> list[Any]:
        """The messages of one frame. Every subscriber of a room gets the very same frame (the node
        encodes a publication once), so parsed frames are remembered: the bench decodes each once,
        not once per connection, and stays cheaper than the server it measures."""
        messages = self._decoded.get(payload)
        if messages is None:
            if text:
                messages = [json.loads(line) for line in payload.split(b"\n")]
            else:
                unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
                unpacker.feed(payload)
                messages = list(unpacker)
            if len(self._decoded) >= 4096:
                self._decoded.clear()
            self._decoded[payload] = messages
        return messages

    async def open(self, index: int, channels: list[str]) -> tuple[FastWebSocket, dict[str, Any]]:
        """Open connection ``index`` on its node, send ``connect`` subscribing ``channels``; return the reply."""
        base, ws_url = _urls(self.o.nodes[index % len(self.o.nodes)])
        user = f"bench-{self.run_id}-{index}"
        token = await self.token(user, base)
        ws = await open_websocket(ws_url, self.subprotocol, open_timeout=60)
        self.sockets.append(ws)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def first(frame: bytes, text: bool) -> None:
            for message in self.decode(frame, text):
                if message.get("id") == 1 and not reply.done():
                    reply.set_result(message)
                elif "push" in message:
                    kind = str(message["push"])
                    self.other_pushes[kind] = self.other_pushes.get(kind, 0) + 1

        def closed(code: int) -> None:
            if not reply.done():
                reply.set_exception(RuntimeError(f"closed with {code} before the connect reply"))

        ws.on_message, ws.on_close = first, closed
        ws.send(
            self.encode(
                {"id": 1, "op": "connect", "token": token, "subscribe": [{"channel": c} for c in channels]}
            )
        )
        async with asyncio.timeout(60):
            message = await reply
        if "error" in message:
            raise RuntimeError(f"connect failed: {message['error']}")
        ws.on_close = self.closed
        return ws, message["result"]

    def node_index(self, node_id: str) -> int:
        return self.node_ids.setdefault(node_id, len(self.node_ids))

    async def open_all(self) -> None:
        """Open the members (and publishers) with at most ``connect_concurrency`` handshakes at once."""
        o = self.o
        members = o.connections // o.rooms if o.rooms else 0
        self.rooms = [_Room(f"room:bench-{self.run_id}-{r}") for r in range(o.rooms)]
        gate = asyncio.Semaphore(o.connect_concurrency)

        async def member(i: int) -> None:
            async with gate:
                room = i // members if members else -1
                channels = [self.rooms[room].channel] if room >= 0 else []
                ws, result = await self.open(i, channels)
            node = self.node_index(result["node"])
            if room < 0:
                return
            position = result["channels"][self.rooms[room].channel]
            receiver = _Receiver(node, room, int(position["offset"]))
            if i >= o.connections - o.slow_readers:
                # Never read again: the server must cut it off (4008) without slowing the others. A small
                # receive buffer (no autotuning) makes the backlog reach the node's outbox within seconds.
                assert ws.transport is not None
                ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                ws.transport.pause_reading()
                return
            self.receivers.append(receiver)
            room_state = self.rooms[room]
            room_state.members_by_node[node] = room_state.members_by_node.get(node, 0) + 1
            publisher = None
            if o.publish_from == "members":
                publisher = _Publisher(ws, node, room)
                self.publishers.append(publisher)
            ws.on_message = self.reader(receiver, publisher)

        async def dedicated(r: int) -> None:
            async with gate:
                ws, result = await self.open(o.connections + r, [])
            publisher = _Publisher(ws, self.node_index(result["node"]), r)
            self.publishers.append(publisher)
            ws.on_message = self.reader(None, publisher)

        jobs = [member(i) for i in range(o.connections)]
        if o.publish_from == "dedicated" and not o.idle:
            jobs += [dedicated(r) for r in range(o.rooms)]
        await asyncio.gather(*jobs)

    # --- receiving -------------------------------------------------------------------------------

    async def settle(self, pids: list[int]) -> bool:
        """Wait ``settle`` seconds, then until the nodes use under 5 % of a core (or ``max_settle``).

        Opening is not free for a node (presence ``join`` pushes to every member of a room,
        for one): measuring before that work is done would charge it to the deliveries.
        """
        await asyncio.sleep(self.o.settle)
        deadline = time.perf_counter() + self.o.max_settle
        while time.perf_counter() < deadline:
            before = cpu_of(pids)
            await asyncio.sleep(0.5)
            after = cpu_of(pids)
            if not before or not after:
                return False  # no pids: nothing to watch
            if _sum_cpu(after) - _sum_cpu(before) < 0.025:
                return True
        return False

    def reader(
        self, receiver: _Receiver | None, publisher: _Publisher | None
    ) -> Callable[[bytes, bool], None]:
        """The message callback of one connection: account for publications, hand replies to ``publisher``."""
        perf = time.perf_counter
        latencies = self.latencies
        pairs = self.delivered_pairs
        decode = self.decode
        other = self.other_pushes

        def on_message(frame: bytes, text: bool) -> None:
            now = perf()
            counted = False
            for message in decode(frame, text):
                if message.get("push") == "publication" and receiver is not None:
                    if not counted:
                        self.publication_frames += 1
                        counted = True
                    data = message["data"]
                    latencies.append(now - data["t"])
                    self.last_receipt = now
                    if _account(receiver, message["offset"]):
                        key = (data["p"], receiver.node)
                        pairs[key] = pairs.get(key, 0) + 1
                elif "id" in message:
                    if publisher is not None:
                        self.acknowledge(publisher, message)
                else:
                    kind = str(message.get("push"))
                    other[kind] = other.get(kind, 0) + 1

        return on_message

    def closed(self, code: int) -> None:
        self.closed_by_server[code] = self.closed_by_server.get(code, 0) + 1

    def acknowledge(self, publisher: _Publisher, message: dict[str, Any]) -> None:
        publisher.pending.pop(message["id"], None)
        if publisher.window is not None:
            publisher.window.release()
        result = message.get("result")
        if result is None or "offset" not in result:
            publisher.errors += 1
            self.publish_errors += 1
            return
        self.rooms[publisher.room].acked[int(result["offset"])] = publisher.node

    # --- publishing ------------------------------------------------------------------------------

    def publish_one(self, publisher: _Publisher) -> None:
        command_id = next(publisher.ids)
        publisher.pending[command_id] = time.perf_counter()
        data: dict[str, Any] = {"t": time.perf_counter(), "p": publisher.node}
        if self.padding:
            data["x"] = self.padding
        self.published += 1
        publisher.ws.send(
            self.encode(
                {
                    "id": command_id,
                    "op": "publish",
                    "channel": self.rooms[publisher.room].channel,
                    "data": data,
                }
            )
        )

    async def wait_for_deliveries(self) -> bool:
        """Until every publish is acknowledged and every receiver has its room's last offset (or ``drain``)."""
        deadline = time.perf_counter() + self.o.drain
        while time.perf_counter() < deadline:
            if not any(p.pending for p in self.publishers):
                finals = [max(room.acked, default=0) for room in self.rooms]
                if all(r.highest >= finals[r.room] and not r.gaps for r in self.receivers):
                    return True
            await asyncio.sleep(0.01)
        return False

    # --- the run ---------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        o = self.o
        pids = o.pids if o.pids is not None else _discover_pids(o.nodes)
        raise_open_file_limit(o.connections + o.rooms + 256)
        rss_before = rss_of(pids)
        opened = time.perf_counter()
        await self.open_all()
        open_s = time.perf_counter() - opened
        settled = time.perf_counter()
        quiet = await self.settle(pids)
        settle_s = time.perf_counter() - settled
        rss_after = rss_of(pids)
        total_connections = len(self.sockets)
        result: dict[str, Any] = {
            "scenario": o.scenario,
            "nodes": len(o.nodes),
            "node_ids": sorted(self.node_ids, key=self.node_ids.__getitem__),
            "pids": pids,
            "connections": total_connections,
            "open_s": round(open_s, 2),
            "settle_s": round(settle_s, 2),
            "settled": quiet,
            "rss_kib_per_connection": per(_sum(rss_after) - _sum(rss_before), total_connections)
            if rss_before and rss_after
            else None,
            "rss_kib": rss_after,
        }
        if not o.idle:
            result.update(await self.measure(pids))
        result["other_pushes"] = dict(sorted(self.other_pushes.items()))
        await self.close()
        return result

    async def measure(self, pids: list[int]) -> dict[str, Any]:
        o = self.o
        redis_pids = o.redis_pids or []
        before = CpuSnapshot.take(pids, redis_pids)
        self.first_publish = time.perf_counter()
        publish_s = await publish_for(
            o.duration, self.publishers, self.publish_one, rate=o.rate, window=o.window
        )
        complete = await self.wait_for_deliveries()
        after = CpuSnapshot.take(pids, redis_pids)
        window = max(self.last_receipt, self.first_publish + publish_s) - self.first_publish
        node_cpu = before.node_cpu_until(after)
        accounting = self.account()
        latencies = sorted(self.latencies)
        return {
            "rooms": o.rooms,
            "members": o.connections // o.rooms,
            "publishers": len(self.publishers),
            "publish_from": o.publish_from,
            "rate": o.rate,
            "window": o.window if o.rate <= 0 else None,
            "codec": o.codec,
            "payload": o.payload,
            "duration_s": round(publish_s, 2),
            "published": self.published,
            "acked": sum(len(r.acked) for r in self.rooms),
            "publish_errors": self.publish_errors,
            "publish_rate": round(self.published / publish_s, 1),
            "deliveries": self.deliveries_total(),
            "deliveries_per_s": round(self.deliveries_total() / window, 1) if window > 0 else None,
            "deliveries_per_frame": round(self.deliveries_total() / max(self.publication_frames, 1), 2),
            "latency_ms": latency_ms(latencies),
            "complete": complete,
            "drain_s": o.drain,
            **accounting,
            **before.figures_until(after),
            "cpu_us_per_delivery": per(node_cpu * 1e6, self.deliveries_total())
            if node_cpu is not None
            else None,
            "cpu_us_per_publication": per(node_cpu * 1e6, self.published) if node_cpu is not None else None,
            "window_s": round(window, 3),
            "slow_readers": o.slow_readers,
            "closed_by_server": {str(k): v for k, v in sorted(self.closed_by_server.items())},
            # A paused reader never sees its 4008 close frame; the nodes count it (/metrics).
            "too_slow_closes": await self.too_slow_closes() if o.slow_readers else None,
        }

    def deliveries_total(self) -> int:
        return sum(r.received for r in self.receivers)

    def account(self) -> dict[str, Any]:
        """Loss, duplicates and reordering per (publisher node, receiver node) pair."""
        pairs: dict[tuple[int, int], dict[str, int]] = {}

        def pair(p: int, r: int) -> dict[str, int]:
            return pairs.setdefault((p, r), {"expected": 0, "delivered": 0, "lost": 0, "duplicates": 0})

        for room in self.rooms:
            by_publisher: dict[int, int] = {}
            for node in room.acked.values():
                by_publisher[node] = by_publisher.get(node, 0) + 1
            for p, count in by_publisher.items():
                for r, members in room.members_by_node.items():
                    pair(p, r)["expected"] += count * members
        finals = [max(room.acked, default=0) for room in self.rooms]
        for receiver in self.receivers:
            acked = self.rooms[receiver.room].acked
            missing = receiver.gaps | set(range(receiver.highest + 1, finals[receiver.room] + 1))
            for offset in missing:
                if offset in acked:
                    pair(acked[offset], receiver.node)["lost"] += 1
            if receiver.duplicates:
                pair(-1, receiver.node)["duplicates"] += receiver.duplicates
        for (p, r), count in self.delivered_pairs.items():
            pair(p, r)["delivered"] += count
        labels = {index: f"n{index + 1}" for index in self.node_ids.values()} | {-1: "?"}
        return {
            "lost": sum(s["lost"] for s in pairs.values()),
            "duplicates": sum(r.duplicates for r in self.receivers),
            "reordered": sum(r.reordered for r in self.receivers),
            "pairs": {f"{labels[p]}->{labels[r]}": s for (p, r), s in sorted(pairs.items())},
        }

    async def close(self) -> None:
        for ws in self.sockets:
            ws.on_close = _ignore
            ws.close()
        await asyncio.sleep(0)


def _ignore(code: int) -> None:
    pass


def _account(receiver: _Receiver, offset: int) -> bool:
    """Count one delivery; False when it is a duplicate (or at/below the subscription's start)."""
    receiver.received += 1
    if offset > receiver.highest:
        if offset > receiver.highest + 1:
            receiver.gaps.update(range(receiver.highest + 1, offset))
        receiver.highest = offset
        return True
    if offset in receiver.gaps:
        receiver.gaps.discard(offset)
        receiver.reordered += 1
        return True
    receiver.duplicates += 1
    return False


# --- helpers -----------------------------------------------------------------------------------------


def _urls(node: str) -> tuple[str, str]:
    """``(http base, ws url)`` for ``http://h:p``, ``ws://h:p/ws`` or ``h:p``."""
    if "://" not in node:
        node = f"http://{node}"
    parts = urlsplit(node)
    scheme = "https" if parts.scheme in ("https", "wss") else "http"
    base = f"{scheme}://{parts.netloc}"
    return base, f"{'wss' if scheme == 'https' else 'ws'}://{parts.netloc}/ws"


def _discover_pids(nodes: Sequence[str]) -> list[int]:
    pids: list[int] = []
    for node in nodes:
        port = urlsplit(_urls(node)[0]).port or 80
        for pid in listener_pids(port):
            if pid not in pids:
                pids.append(pid)
    if not pids:
        print("fanout: no node pid found (give --pids): CPU and RSS will be missing", file=sys.stderr)
    return pids


def _sum(values: dict[int, int]) -> int:
    return sum(values.values())


def _sum_cpu(values: dict[int, float]) -> float:
    return sum(values.values())


def table(result: dict[str, Any]) -> str:
    """The result as a few human lines."""
    lines = [
        f"scenario {result['scenario']}: {result['connections']} connections over {result['nodes']} node(s), "
        f"opened in {result['open_s']} s"
    ]
    lines.append(
        f"  settled after {result['settle_s']} s{'' if result['settled'] else ' (NOT quiet)'}; "
        f"pushes other than publications: {result['other_pushes'] or 'none'}"
    )
    if result.get("rss_kib_per_connection") is not None:
        lines.append(f"  RSS per connection        {result['rss_kib_per_connection']:>10} KiB")
    if "deliveries" in result:
        lat = result["latency_ms"]
        rows = [
            ("rooms x members", f"{result['rooms']} x {result['members']}"),
            ("publishers", f"{result['publishers']} ({result['publish_from']})"),
            ("published / acked", f"{result['published']} / {result['acked']} ({result['publish_rate']}/s)"),
            ("deliveries", f"{result['deliveries']} ({result['deliveries_per_s']}/s)"),
            ("publications per frame", f"{result['deliveries_per_frame']}"),
            ("latency p50 / p99 / max", f"{lat['p50']} / {lat['p99']} / {lat['max']} ms"),
            ("node CPU", f"{result['node_cpu_s']} s"),
            ("CPU per delivery", f"{result['cpu_us_per_delivery']} us"),
            ("CPU per publication", f"{result['cpu_us_per_publication']} us"),
            ("bench CPU / window", f"{result['bench_cpu_s']} s / {result['window_s']} s"),
            ("Redis CPU", f"{result['redis_cpu_s']} s"),
            ("other processes' CPU", f"{result['others_cpu_s']} s"),
            ("lost / dups / reordered", f"{result['lost']} / {result['duplicates']} / {result['reordered']}"),
        ]
        lines += [f"  {name:<25} {value}" for name, value in rows]
        for name, s in result["pairs"].items():
            lines.append(
                f"    {name:<10} expected {s['expected']:>9} delivered {s['delivered']:>9} "
                f"lost {s['lost']:>6} dups {s['duplicates']:>6}"
            )
        if not result["complete"]:
            lines.append(
                f"  INCOMPLETE: {result['published'] - result['acked']} publishes unacknowledged or deliveries "
                f"missing after --drain {result['drain_s']} s (the nodes could not keep up)"
            )
        if result.get("too_slow_closes") is not None:
            lines.append(f"  closed as too slow (4008, nodes' /metrics): {result['too_slow_closes']}")
        if result["closed_by_server"]:
            lines.append(f"  closed by the server: {result['closed_by_server']}")
        if result["publish_errors"]:
            lines.append(
                f"  {result['publish_errors']} publishes refused (429 or 4029: start the nodes with "
                "TIDINGS_COMMAND_RATE and TIDINGS_COMMAND_BURST above the rate measured)"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> BenchOptions:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fanout", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes", nargs="+", required=True, help="node URLs (http://h:p, ws://h:p/ws or h:p)"
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help="preset (other flags override it)")
    parser.add_argument("--connections", type=int, help="subscribing connections (default 100)")
    parser.add_argument("--rooms", type=int, help="rooms; connections are split evenly (default 1)")
    parser.add_argument("--publish-from", choices=["dedicated", "members"])
    parser.add_argument(
        "--rate", type=float, help="msg/s per publisher; 0 = as fast as acknowledged (default 50)"
    )
    parser.add_argument(
        "--window", type=int, help="publishes in flight per publisher when --rate 0 (default 16)"
    )
    parser.add_argument("--duration", type=float, help="seconds of publishing (default 5)")
    parser.add_argument("--drain", type=float, help="seconds to wait for the last deliveries (default 10)")
    parser.add_argument(
        "--idle", action="store_true", default=None, help="only open connections: RSS per connection"
    )
    parser.add_argument("--codec", choices=["json", "msgpack"])
    parser.add_argument("--payload", type=int, help="bytes of padding per message (default 0)")
    parser.add_argument("--slow-readers", type=int, help="members that never read (default 0)")
    parser.add_argument(
        "--pids", help="comma-separated node pids (default: found from the URLs' listening ports)"
    )
    parser.add_argument(
        "--redis-pid", help="the backplane's pid(s), comma-separated: its CPU is reported apart"
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get("TIDINGS_JWT_SECRET"),
        help="JWT secret (default $TIDINGS_JWT_SECRET; without it: POST /api/dev/token)",
    )
    parser.add_argument("--connect-concurrency", type=int, help="handshakes in flight (default 100)")
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds at least between opening and measuring, then until quiet (default 1)",
    )
    parser.add_argument(
        "--max-settle", type=float, help="seconds at most waiting for the nodes to go quiet (120)"
    )
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(SCENARIOS.get(args.scenario or "", {}))
    for name in (
        "connections",
        "rooms",
        "publish_from",
        "rate",
        "window",
        "duration",
        "drain",
        "idle",
        "codec",
        "payload",
        "slow_readers",
        "connect_concurrency",
        "settle",
        "max_settle",
    ):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if args.pids:
        values["pids"] = [int(p) for p in args.pids.split(",")]
    if args.redis_pid:
        values["redis_pids"] = [int(p) for p in args.redis_pid.split(",")]
    options = BenchOptions(nodes=args.nodes, secret=args.secret, scenario=args.scenario or "custom", **values)
    if not options.idle and options.rooms < 1:
        parser.error("--rooms must be at least 1 unless --idle")
    return options


def run(options: BenchOptions) -> dict[str, Any]:
    """Run one benchmark on uvloop when available (the bench must not be the bottleneck)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(Bench(options).run())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(Bench(options).run())


def main(argv: Sequence[str] | None = None) -> int:
    result = run(parse_args(argv))
    print(json.dumps(result, separators=(",", ":")), flush=True)
    print(table(result), file=sys.stderr, flush=True)
    failed = result.get("lost", 0) or result.get("duplicates", 0) or result.get("reordered", 0)
    return 1 if failed or result.get("complete") is False else 0


if __name__ == "__main__":
    sys.exit(main())
