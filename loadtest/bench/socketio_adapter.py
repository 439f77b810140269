"""The socket.io side of the fan-out benchmark: Engine.IO 4 / Socket.IO 5 spoken by hand over raw WebSockets.

``GET /socket.io/?EIO=4&transport=websocket&room=R``, ``40`` -> ``40{"sid":..}``, events
``42["msg",data]``, the publisher's ``42N["pub",data]`` -> ``43N[]``, pings ``2`` answered
``3``: no socket.io client library in the loop. socket.io's ``io.to(room).emit`` includes
the sender, so every publisher is also a member of its room. Sequence numbers are per
publisher: the Redis adapter orders one sender's broadcasts, not two senders' on different
nodes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from loadtest.bench.driver import DriverOptions, Measured, Opening, Receiver, Stream, Tally
from loadtest.benchkit import per
from loadtest.fastws import FastWebSocket, open_websocket

__all__ = ["Options", "SocketIOAdapter", "table"]


@dataclass
class Options(DriverOptions):
    nodes: int = 2
    max_run: float = 300.0  # seconds: the whole run (opening, settling, publishing, draining)
    wait_quiet: float = 60.0  # seconds at most waiting, before starting, for the machine to be idle
    node_bin: str = "node"
    announce_joins: bool = False  # the app tells a room's members of each join (as Tidings does)


class _Receiver(Receiver):
    __slots__ = ("streams",)

    def __init__(self, node: int, room: int) -> None:
        super().__init__(node, room)
        self.streams: dict[int, Stream] = {}  # publisher key -> what arrived from it


@dataclass
class _Publisher:
    ws: FastWebSocket
    node: int
    room: int
    index: int  # the connection's index: publishers are scheduled in this order
    key: int = 0  # carried in every message ("p"): its position in the adapter's publishers
    pending: dict[int, int] = field(default_factory=dict)  # ack id -> seq
    acked: set[int] = field(default_factory=set)
    last_acked: int = 0
    next_id: int = 0
    seq: int = 0
    window: asyncio.Semaphore | None = None


class SocketIOAdapter:
    """One benchmark run's socket.io connections (on nodes at ``ports``) and their accounting."""

    def __init__(
        self, options: Options, ports: list[int], node_pids: list[int], redis_pid: int | None
    ) -> None:
        self.o = options
        self.tally = Tally()
        self.ports = ports
        self.pids = node_pids
        self.redis_pid = redis_pid
        self.redis_pids = [redis_pid] if redis_pid else []
        self.rooms = [f"bench-{os.getpid()}-{r}" for r in range(options.rooms)]
        self.sockets: list[FastWebSocket] = []
        self.receivers: list[_Receiver] = []
        self.publishers: list[_Publisher] = []
        self.room_publishers: list[list[_Publisher]] = [[] for _ in self.rooms]
        self._decoded: dict[bytes, tuple[float, int, int]] = {}

    # --- connections -----------------------------------------------------------------------------

    async def open(self, index: int, room: str | None) -> tuple[FastWebSocket, int]:
        """Open connection ``index`` on node ``index % nodes`` and complete the Socket.IO connect."""
        node = index % len(self.ports)
        query = "EIO=4&transport=websocket" + (f"&room={room}" if room else "")
        ws = await open_websocket(
            f"ws://127.0.0.1:{self.ports[node]}/socket.io/?{query}", None, open_timeout=60
        )
        self.sockets.append(ws)
        connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def first(frame: bytes, text: bool) -> None:
            if frame == b"2":  # Engine.IO ping
                ws.send("3")
            elif frame.startswith(b"40"):  # Socket.IO CONNECT reply: 40{"sid":...}
                if not connected.done():
                    connected.set_result(None)
            elif frame.startswith(b"44") and not connected.done():  # CONNECT_ERROR
                connected.set_exception(RuntimeError(f"connect error: {frame[:200]!r}"))
            # 0{...}: the Engine.IO open packet; nothing to do with it

        def lost(code: int) -> None:
            if not connected.done():
                connected.set_exception(RuntimeError(f"closed with {code} before the connect reply"))

        ws.on_message, ws.on_close = first, lost
        ws.send("40")  # Socket.IO CONNECT to the main namespace
        async with asyncio.timeout(60):
            await connected
        ws.on_close = self.tally.on_closed
        return ws, node

    async def open_all(self) -> None:
        """Connection i on node i % nodes, in room i // (N/R): a room's members alternate between nodes."""
        o = self.o
        gate = asyncio.Semaphore(o.connect_concurrency)
        size = o.connections // o.rooms

        async def member(i: int) -> None:
            room = None if o.idle else i // size
            async with gate:
                ws, node = await self.open(i, None if room is None else self.rooms[room])
            if room is None:
                ws.on_message = self.idle_reader(ws)
                return
            receiver = _Receiver(node, room)
            self.receivers.append(receiver)
            publisher = _Publisher(ws, node, room, i) if o.publish_from == "members" else None
            if publisher is not None:
                self.publishers.append(publisher)
            ws.on_message = self.reader(ws, receiver, publisher)

        await asyncio.gather(*(member(i) for i in range(o.connections)))
        if not o.idle and o.publish_from == "dedicated":
            for room in range(o.rooms):  # one more connection per room, round-robin like the rest (N + r)
                ws, node = await self.open(o.connections + room, self.rooms[room])
                receiver = _Receiver(node, room)  # io.to(room) includes the sender: it is a member too
                self.receivers.append(receiver)
                publisher = _Publisher(ws, node, room, o.connections + room)
                self.publishers.append(publisher)
                ws.on_message = self.reader(ws, receiver, publisher)
        self.publishers.sort(key=lambda p: p.index)
        for key, publisher in enumerate(self.publishers):
            publisher.key = key
            self.room_publishers[publisher.room].append(publisher)

    # --- receiving -------------------------------------------------------------------------------

    def decode(self, frame: bytes) -> tuple[float, int, int]:
        """(t, publisher key, seq) of a ``42["msg",{...}]`` frame: a room's members get the same bytes."""
        found = self._decoded.get(frame)
        if found is None:
            event = json.loads(frame[2:])
            data = event[1]
            found = (float(data["t"]), int(data["p"]), int(data["s"]))
            if len(self._decoded) >= 4096:
                self._decoded.clear()
            self._decoded[frame] = found
        return found

    def idle_reader(self, ws: FastWebSocket) -> Callable[[bytes, bool], None]:
        return lambda frame, text: self.on_other(ws, frame)

    def on_other(self, ws: FastWebSocket, frame: bytes) -> None:
        """Anything but a message or an ack: answer Engine.IO's ping (``2``), count the rest by type."""
        if frame == b"2":
            ws.send("3")
        else:
            self.tally.count_other(frame[:2].decode(errors="replace"))

    def reader(
        self, ws: FastWebSocket, receiver: _Receiver, publisher: _Publisher | None
    ) -> Callable[[bytes, bool], None]:
        perf = time.perf_counter
        tally = self.tally
        latencies = tally.latencies
        decode = self.decode
        streams = receiver.streams

        def on_message(frame: bytes, text: bool) -> None:
            if frame.startswith(b'42["msg"'):
                now = perf()
                t, sender, seq = decode(frame)
                latencies.append(now - t)
                tally.last_receipt = now
                stream = streams.get(sender)
                if stream is None:
                    stream = streams[sender] = Stream()
                receiver.count(stream, seq)
            elif frame.startswith(b"43") and publisher is not None:  # 43<id>[...]: the ack
                self.acknowledge(publisher, int(frame[2 : frame.index(b"[")]))
            else:
                self.on_other(ws, frame)

        return on_message

    def acknowledge(self, publisher: _Publisher, ack_id: int) -> None:
        seq = publisher.pending.pop(ack_id, None)
        if seq is None:
            self.tally.count_other("43?")
            return
        publisher.acked.add(seq)
        publisher.last_acked = max(publisher.last_acked, seq)
        if publisher.window is not None:
            publisher.window.release()

    # --- publishing ------------------------------------------------------------------------------

    def publish_one(self, publisher: _Publisher) -> None:
        ack_id = publisher.next_id
        publisher.next_id += 1
        publisher.seq += 1
        publisher.pending[ack_id] = publisher.seq
        data = {"t": time.perf_counter(), "s": publisher.seq, "p": publisher.key}
        self.tally.published += 1
        publisher.ws.send(f'42{ack_id}["pub",{json.dumps(data, separators=(",", ":"))}]')

    def has_everything(self, receiver: _Receiver) -> bool:
        """Whether ``receiver`` has, without gaps, up to the last acknowledged publish of its room's publishers."""
        for publisher in self.room_publishers[receiver.room]:
            if publisher.last_acked:
                stream = receiver.streams.get(publisher.key)
                if stream is None or not stream.has_all(publisher.last_acked):
                    return False
        return True

    def delivered_all(self) -> bool:
        """Every publish acknowledged and every member has all of them."""
        if any(p.pending for p in self.publishers):
            return False
        return all(self.has_everything(r) for r in self.receivers)

    def deliveries(self) -> int:
        return sum(r.received for r in self.receivers)

    # --- the result ------------------------------------------------------------------------------

    def opening(self, opening: Opening) -> dict[str, Any]:
        return {
            "scenario": self.o.scenario,
            "server": "socket.io",
            "nodes": len(self.ports),
            "pids": self.pids,
            "redis_pid": self.redis_pid,
            "connections": opening.connections,
            "open_s": opening.open_s,
            "settle_s": opening.settle_s,
            "settled": opening.settled,
            "rss_kib_per_connection": opening.rss_kib_per_connection,
            "rss_kib_before": opening.rss_before,
            "rss_kib": opening.rss_after,
        }

    async def measured(self, m: Measured) -> dict[str, Any]:
        o = self.o
        node_cpu = m.node_cpu_s or 0.0
        return {
            "rooms": o.rooms,
            "members": len(self.receivers),
            "members_per_room": len(self.receivers) // o.rooms,
            "members_per_node": _per_node(r.node for r in self.receivers),
            "publish_from": o.publish_from,
            "publishers": len(self.publishers),
            "publishers_per_node": _per_node(p.node for p in self.publishers),
            "rate": o.rate,
            "window": o.window if o.rate <= 0 else None,
            "duration_s": round(m.publish_s, 2),
            "published": m.published,
            "acked": sum(len(p.acked) for p in self.publishers),
            "publish_rate": m.publish_rate,
            "deliveries": m.deliveries,
            "deliveries_per_s": m.deliveries_per_s,
            "deliveries_per_publication": per(m.deliveries, m.published),
            "latency_ms": m.latency_ms,
            "complete": m.complete,
            "drain_s": o.drain,
            **self.account(),
            **m.cpu,
            "cpu_us_per_delivery": per(node_cpu * 1e6, m.deliveries),
            "cpu_us_per_publication": per(node_cpu * 1e6, m.published),
            "window_s": round(m.window_s, 3),
        }

    def closing(self) -> dict[str, Any]:
        return {
            "closed_by_server": {str(k): v for k, v in sorted(self.tally.closed.items())},
            "other_packets": dict(sorted(self.tally.other.items())),
        }

    def account(self) -> dict[str, Any]:
        """Loss and duplicates per receiving node; a message is owed once its publish was acknowledged."""
        per_node: dict[str, dict[str, int]] = {}
        lost_total = 0
        for r in self.receivers:
            entry = per_node.setdefault(
                f"n{r.node + 1}", {"expected": 0, "delivered": 0, "lost": 0, "duplicates": 0}
            )
            for publisher in self.room_publishers[r.room]:
                stream = r.streams.get(publisher.key) or Stream()
                lost = sum(1 for seq in stream.missing(publisher.last_acked) if seq in publisher.acked)
                lost_total += lost
                entry["expected"] += len(publisher.acked)
                entry["lost"] += lost
            entry["delivered"] += r.received - r.duplicates
            entry["duplicates"] += r.duplicates
        return {
            "lost": lost_total,
            "duplicates": sum(r.duplicates for r in self.receivers),
            "reordered": sum(r.reordered for r in self.receivers),
            "by_receiver_node": dict(sorted(per_node.items())),
        }


def _per_node(nodes: Iterable[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in nodes:
        counts[f"n{node + 1}"] = counts.get(f"n{node + 1}", 0) + 1
    return dict(sorted(counts.items()))


def table(result: dict[str, Any]) -> str:
    lines = [
        f"socket.io {result['scenario']}: {result['connections']} connections over {result['nodes']} nodes, "
        f"opened in {result['open_s']} s, settled after {result['settle_s']} s"
        f"{'' if result['settled'] else ' (NOT quiet)'}",
        f"  RSS per connection: {result['rss_kib_per_connection']} KiB  (nodes now {result['rss_kib']} KiB)",
    ]
    if "deliveries" in result:
        latency = result["latency_ms"]
        lines += [
            f"  published {result['published']} ({result['publish_rate']}/s), acked {result['acked']}, "
            f"deliveries {result['deliveries']} ({result['deliveries_per_s']}/s, "
            f"{result['deliveries_per_publication']} per publication) to {result['members']} members "
            f"{result['members_per_node']} in {result['rooms']} room(s); {result['publishers']} publishers "
            f"({result['publish_from']}) {result['publishers_per_node']}",
            f"  node CPU {result['node_cpu_s']} s = {result['cpu_us_per_delivery']} µs/delivery, "
            f"{result['cpu_us_per_publication']} µs/publication (user {result['node_user_s']} s, "
            f"sys {result['node_sys_s']} s); redis {result['redis_cpu_s']} s; "
            f"bench {result['bench_cpu_s']} s over a {result['window_s']} s window; others {result['others_cpu_s']} s",
            f"  latency p50 {latency['p50']} ms, p99 {latency['p99']} ms, max {latency['max']} ms",
            f"  lost {result['lost']}, duplicates {result['duplicates']}, reordered {result['reordered']}, "
            f"complete {result['complete']}; by receiving node {result['by_receiver_node']}",
        ]
    if result.get("closed_by_server"):
        lines.append(f"  closed by the server: {result['closed_by_server']}")
    return "\n".join(lines)
