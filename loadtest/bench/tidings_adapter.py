"""The Tidings side of the fan-out benchmark: connect/subscribe/publish over the Tidings protocol.

Each connection sends one ``connect`` that subscribes its room and learns its node from the
reply (so a load balancer URL works too); publications are accounted per room by offset,
acknowledged publishes by the offset of their reply. Frames are decoded with the server's
own :class:`~tidings.server.gateway.protocol.Codec`, once per distinct frame: every subscriber of a
room gets the very same bytes (the node encodes a publication once).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from loadtest.bench.driver import DriverOptions, Measured, Opening, Receiver, Stream, Tally
from loadtest.bench.shards import shard_figures
from loadtest.benchkit import per, raise_open_file_limit
from loadtest.fastws import FastWebSocket, open_websocket
from loadtest.procstat import listener_pids
from tidings.server.gateway.protocol import Codec

__all__ = ["BenchOptions", "TidingsAdapter", "node_urls", "table"]


@dataclass
class BenchOptions(DriverOptions):
    nodes: list[str] = field(default_factory=list)
    codec: str = "json"
    payload: int = 0  # bytes of padding in each message
    secret: str | None = None
    pids: list[int] | None = None
    redis_pids: list[int] | None = None  # reported apart: the backplane's share, not the nodes'
    key_prefix: str = "tidings"  # the nodes' TIDINGS_KEY_PREFIX: which shard serves a room (several pids)
    slow_readers: int = 0  # connections in the room that never read (they must be cut off, not slow others)


class _Receiver(Receiver):
    __slots__ = ("stream",)

    def __init__(self, node: int, room: int, start: int) -> None:
        super().__init__(node, room)
        self.stream = Stream(start)


@dataclass
class _Room:
    channel: str
    acked: dict[int, int] = field(default_factory=dict)  # offset -> publisher node index
    members_by_node: dict[int, int] = field(default_factory=dict)

    @property
    def last(self) -> int:
        return max(self.acked, default=0)


@dataclass
class _Publisher:
    ws: FastWebSocket
    node: int
    room: int
    pending: dict[int, float] = field(default_factory=dict)  # command id -> sent at
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(2))
    window: asyncio.Semaphore | None = None
    errors: int = 0


class TidingsAdapter:
    """One benchmark run's Tidings connections and their accounting."""

    def __init__(self, options: BenchOptions) -> None:
        self.o = options
        self.tally = Tally()
        self.run_id = secrets.token_hex(3)
        self.codec = Codec.MSGPACK if options.codec == "msgpack" else Codec.JSON
        self.pids = options.pids if options.pids is not None else _discover_pids(options.nodes)
        self.redis_pids = options.redis_pids or []
        self.node_ids: dict[str, int] = {}
        self.rooms: list[_Room] = []
        self.receivers: list[_Receiver] = []
        self.publishers: list[_Publisher] = []
        self.sockets: list[FastWebSocket] = []
        self.publication_frames = 0  # frames that carried publications: deliveries / frames shows coalescing
        self.delivered_pairs: dict[tuple[int, int], int] = {}
        self.publish_errors = 0
        self.padding = "x" * options.payload
        self._decoded: dict[bytes, list[Any]] = {}

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
                response = await client.get(f"{node_urls(node)[0]}/metrics")
                for line in response.text.splitlines():
                    if line.startswith('tidings_disconnects_total{code="4008"}'):
                        total += int(float(line.split()[-1]))
        return total

    def decode(self, payload: bytes) -> list[Any]:
        """The messages of one frame, each distinct frame decoded once: the bench decodes a room's
        publication once, not once per connection, and stays cheaper than the server it measures."""
        messages = self._decoded.get(payload)
        if messages is None:
            messages = self.codec.split(payload)
            if len(self._decoded) >= 4096:
                self._decoded.clear()
            self._decoded[payload] = messages
        return messages

    async def open(self, index: int, channels: list[str]) -> tuple[FastWebSocket, dict[str, Any]]:
        """Open connection ``index`` on its node, send ``connect`` subscribing ``channels``; return the reply."""
        base, ws_url = node_urls(self.o.nodes[index % len(self.o.nodes)])
        token = await self.token(f"bench-{self.run_id}-{index}", base)
        ws = await open_websocket(ws_url, self.codec.value, open_timeout=60)
        self.sockets.append(ws)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def first(frame: bytes, text: bool) -> None:
            for message in self.decode(frame):
                if message.get("id") == 1 and not reply.done():
                    reply.set_result(message)
                elif "push" in message:
                    self.tally.count_other(str(message["push"]))

        def closed(code: int) -> None:
            if not reply.done():
                reply.set_exception(RuntimeError(f"closed with {code} before the connect reply"))

        ws.on_message, ws.on_close = first, closed
        subscribe = [{"channel": c} for c in channels]
        ws.send(self.codec.encode({"id": 1, "op": "connect", "token": token, "subscribe": subscribe}))
        async with asyncio.timeout(60):
            message = await reply
        if "error" in message:
            raise RuntimeError(f"connect failed: {message['error']}")
        ws.on_close = self.tally.on_closed
        return ws, message["result"]

    def node_index(self, node_id: str) -> int:
        return self.node_ids.setdefault(node_id, len(self.node_ids))

    async def open_all(self) -> None:
        """Open the members (and publishers) with at most ``connect_concurrency`` handshakes at once."""
        o = self.o
        raise_open_file_limit(o.connections + o.rooms + 256)
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

    def reader(
        self, receiver: _Receiver | None, publisher: _Publisher | None
    ) -> Callable[[bytes, bool], None]:
        """The message callback of one connection: account for publications, hand replies to ``publisher``."""
        perf = time.perf_counter
        tally = self.tally
        latencies = tally.latencies
        pairs = self.delivered_pairs
        decode = self.decode

        def on_message(frame: bytes, text: bool) -> None:
            now = perf()
            counted = False
            for message in decode(frame):
                if message.get("push") == "publication" and receiver is not None:
                    if not counted:
                        self.publication_frames += 1
                        counted = True
                    data = message["data"]
                    latencies.append(now - data["t"])
                    tally.last_receipt = now
                    if receiver.count(receiver.stream, message["offset"]):
                        key = (data["p"], receiver.node)
                        pairs[key] = pairs.get(key, 0) + 1
                elif "id" in message:
                    if publisher is not None:
                        self.acknowledge(publisher, message)
                else:
                    tally.count_other(str(message.get("push")))

        return on_message

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
        self.tally.published += 1
        channel = self.rooms[publisher.room].channel
        publisher.ws.send(
            self.codec.encode({"id": command_id, "op": "publish", "channel": channel, "data": data})
        )

    def delivered_all(self) -> bool:
        """Every publish acknowledged and every receiver has its room's last offset."""
        if any(p.pending for p in self.publishers):
            return False
        finals = [room.last for room in self.rooms]
        return all(r.stream.has_all(finals[r.room]) for r in self.receivers)

    def deliveries(self) -> int:
        return sum(r.received for r in self.receivers)

    # --- the result ------------------------------------------------------------------------------

    def opening(self, opening: Opening) -> dict[str, Any]:
        return {
            "scenario": self.o.scenario,
            "nodes": len(self.o.nodes),
            "node_ids": sorted(self.node_ids, key=self.node_ids.__getitem__),
            "pids": self.pids,
            "connections": opening.connections,
            "open_s": opening.open_s,
            "settle_s": opening.settle_s,
            "settled": opening.settled,
            "rss_kib_per_connection": opening.rss_kib_per_connection,
            "rss_kib": opening.rss_after,
        }

    async def measured(self, m: Measured) -> dict[str, Any]:
        o = self.o
        node_cpu = m.node_cpu_s
        return {
            "rooms": o.rooms,
            "members": o.connections // o.rooms,
            "publishers": len(self.publishers),
            "publish_from": o.publish_from,
            "rate": o.rate,
            "window": o.window if o.rate <= 0 else None,
            "codec": o.codec,
            "payload": o.payload,
            "duration_s": round(m.publish_s, 2),
            "published": m.published,
            "acked": sum(len(r.acked) for r in self.rooms),
            "publish_errors": self.publish_errors,
            "publish_rate": m.publish_rate,
            "deliveries": m.deliveries,
            "deliveries_per_s": m.deliveries_per_s,
            "deliveries_per_frame": round(m.deliveries / max(self.publication_frames, 1), 2),
            "latency_ms": m.latency_ms,
            "complete": m.complete,
            "drain_s": o.drain,
            **self.account(),
            **m.cpu,
            "cpu_us_per_delivery": per(node_cpu * 1e6, m.deliveries) if node_cpu is not None else None,
            "cpu_us_per_publication": per(node_cpu * 1e6, m.published) if node_cpu is not None else None,
            "redis_cpu_us_per_publication": (
                per(m.cpu["redis_cpu_s"] * 1e6, m.published) if m.cpu["redis_cpu_s"] is not None else None
            ),
            **self.redis_background(m),
            **self.shards(m),
            "window_s": round(m.window_s, 3),
            "slow_readers": o.slow_readers,
            "closed_by_server": {str(k): v for k, v in sorted(self.tally.closed.items())},
            # A paused reader never sees its 4008 close frame; the nodes count it (/metrics).
            "too_slow_closes": await self.too_slow_closes() if o.slow_readers else None,
        }

    def redis_background(self, m: Measured) -> dict[str, Any]:
        """Redis's CPU while idle (``--redis-idle``) and its CPU per publication above that background."""
        idle = m.redis_idle_cpu_per_s
        if idle is None or m.cpu["redis_cpu_s"] is None or not m.published:
            return {}
        background = sum(idle.values()) * m.cpu_window_s
        return {
            "redis_idle_ms_per_s": {str(pid): round(rate * 1e3, 2) for pid, rate in idle.items()},
            "redis_cpu_us_per_publication_above_idle": per(
                (m.cpu["redis_cpu_s"] - background) * 1e6, m.published
            ),
        }

    def shards(self, m: Measured) -> dict[str, Any]:
        """With several Redis pids (a Redis Cluster's primaries): rooms and CPU per shard, and the balance."""
        if len(self.redis_pids) < 2:
            return {}
        published = {room.channel: len(room.acked) for room in self.rooms}
        cpu = {int(pid): seconds for pid, seconds in m.cpu["redis_cpu"].items()}
        return shard_figures(self.o.key_prefix, published, self.redis_pids, cpu, m.redis_idle_cpu_per_s)

    def closing(self) -> dict[str, Any]:
        return {"other_pushes": dict(sorted(self.tally.other.items()))}

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
        for receiver in self.receivers:
            room = self.rooms[receiver.room]
            for offset in receiver.stream.missing(room.last):
                if offset in room.acked:
                    pair(room.acked[offset], receiver.node)["lost"] += 1
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


def node_urls(node: str) -> tuple[str, str]:
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
        port = urlsplit(node_urls(node)[0]).port or 80
        for pid in listener_pids(port):
            if pid not in pids:
                pids.append(pid)
    if not pids:
        print("fanout: no node pid found (give --pids): CPU and RSS will be missing", file=sys.stderr)
    return pids


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
        lines += _delivery_lines(result)
    return "\n".join(lines)


def _delivery_lines(result: dict[str, Any]) -> list[str]:
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
        ("Redis CPU", f"{result['redis_cpu_s']} s ({result['redis_cpu_us_per_publication']} us/publication)"),
        *_redis_idle_rows(result),
        ("other processes' CPU", f"{result['others_cpu_s']} s"),
        ("lost / dups / reordered", f"{result['lost']} / {result['duplicates']} / {result['reordered']}"),
    ]
    lines = [f"  {name:<25} {value}" for name, value in rows]
    if result.get("shards"):
        lines += _shard_lines(result)
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
    return lines


def _redis_idle_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    if "redis_idle_ms_per_s" not in result:
        return []
    idle = " + ".join(str(v) for v in result["redis_idle_ms_per_s"].values())
    return [
        ("Redis CPU while idle", f"{idle} ms/s"),
        ("Redis above idle", f"{result['redis_cpu_us_per_publication_above_idle']} us/publication"),
    ]


def _shard_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        f"  Redis shards              {result['redis_shards']}: CPU balance (max/min - 1) "
        f"{result['shard_cpu_balance_pct']} %, rooms balance {result['shard_rooms_balance_pct']} %"
    ]
    for index, shard in enumerate(result["shards"]):
        lines.append(
            f"    shard {index} (pid {shard['pid']}) rooms {shard['rooms']:>5} published {shard['published']:>7} "
            f"CPU {shard['cpu_s']} s ({_signed(shard['vs_mean_pct'])} % vs mean, "
            f"{shard['cpu_us_per_publication']} us per own publication; idle {shard['idle_ms_per_s']} ms/s)"
        )
    return lines


def _signed(value: float | None) -> str:
    return "?" if value is None else f"{value:+}"
