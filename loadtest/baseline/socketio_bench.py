"""The socket.io baseline of issue 9, measured the way loadtest/fanout.py measures Tidings.

    cd loadtest/baseline/socketio && npm ci && cd -
    flock /tmp/bench.lock .venv/bin/python loadtest/baseline/socketio_bench.py --scenario steady

Starts, on 127.0.0.1 only: an embedded Valkey (the same binary ``tidings up`` uses), and
two ``node socketio/server.js`` processes (socket.io 4 + @socket.io/redis-adapter) on free
ports. It then opens N raw WebSocket connections (loadtest/fastws.py, speaking Engine.IO 4
/ Socket.IO 5 by hand: no socket.io client library in the loop) split round-robin over the
two nodes, puts them in R rooms of N/R members (connection i in room i // (N/R), so the
members of a room alternate between the nodes and fan-out crosses Redis, as in fanout.py),
and runs one scenario:

    steady  1,000 subscribers in one room, one dedicated publisher at 50 msg/s for 15 s
    burst   the same room, the publisher as fast as acknowledged with 16 in flight, 15 s
    rooms   200 rooms x 5 members, every member publishing to its room at 1 msg/s, 15 s
    idle    5,000 idle connections: the nodes' RSS growth per connection

Measured exactly as fanout.py does: the node processes' utime + stime (/proc/<pid>/stat)
from the first publish until every acknowledged message has reached every member of its
room, divided by the deliveries and by the publications; latency from the publisher's
``perf_counter`` carried in the message (publishers and members share this process); loss
(every member must get every acknowledged message of every publisher of its room); the
bench's own CPU (when it nears the window, the bench was the limit); the nodes' VmRSS
growth over the connections opened.

socket.io's ``io.to(room).emit`` includes the sender, and a publisher's handshake names its
room, so every publisher is also a member: a dedicated publisher (steady, burst) makes each
publication N/R + 1 deliveries, a publishing member (rooms) N/R, and every one of them is
counted (and checked for loss) like any other. Sequence numbers are per publisher: the
Redis adapter orders one sender's broadcasts, not two senders' on different nodes.

Every process started here is stopped by pid in a ``finally`` block; the whole run is
bounded (``--max-run``). Prints one JSON line on stdout and a small table on stderr; the
exit status is 1 when anything was lost, duplicated or not delivered in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest.benchkit import (  # noqa: E402
    CpuSnapshot,
    latency_ms,
    per,
    publish_for,
    raise_open_file_limit,
)
from loadtest.fastws import FastWebSocket, open_websocket  # noqa: E402
from loadtest.procstat import busy_seconds, cpu_of, rss_of  # noqa: E402
from tidings.server.devcluster.valkey import ValkeyServer, die_with_parent, find_server_binary  # noqa: E402

SOCKETIO_DIR = HERE / "socketio"
SERVER_JS = SOCKETIO_DIR / "server.js"

SCENARIOS: dict[str, dict[str, Any]] = {
    "steady": {"connections": 1000, "rate": 50.0, "duration": 15.0},
    "burst": {"connections": 1000, "rate": 0.0, "window": 16, "duration": 15.0},
    # fanout.py's rooms: every member publishes to its own room, 1 msg/s each, spread evenly.
    "rooms": {"connections": 1000, "rooms": 200, "publish_from": "members", "rate": 1.0, "duration": 15.0},
    "idle": {"connections": 5000, "idle": True, "duration": 0.0},
}


@dataclass
class Options:
    scenario: str = "custom"
    nodes: int = 2
    connections: int = 100
    rooms: int = 1
    publish_from: str = "dedicated"  # "dedicated": one extra connection per room; "members": every member
    rate: float = 50.0  # msg/s per publisher; 0 = as fast as acknowledged, with ``window`` in flight
    window: int = 16
    duration: float = 5.0
    drain: float = 10.0
    idle: bool = False
    connect_concurrency: int = 100
    settle: float = 1.0
    max_settle: float = 120.0
    max_run: float = 300.0  # seconds: the whole run (opening, settling, publishing, draining)
    wait_quiet: float = 60.0  # seconds at most waiting, before starting, for the machine to be idle
    node_bin: str = "node"


# --- processes ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NodeProcess:
    """One ``node server.js`` on 127.0.0.1:port, its output in a log file."""

    def __init__(self, index: int, redis_url: str, log_dir: str, node_bin: str) -> None:
        self.index = index
        self.port = _free_port()
        self.redis_url = redis_url
        self.log_path = Path(log_dir) / f"node-{index + 1}.log"
        self.node_bin = node_bin
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = dict(os.environ, PORT=str(self.port), HOST="127.0.0.1", REDIS_URL=self.redis_url)
        env.pop("NODE_OPTIONS", None)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.node_bin, str(SERVER_JS)],
                cwd=SOCKETIO_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=die_with_parent,
            )

    def wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"node {self.index + 1} exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"node {self.index + 1} not listening after {timeout} s: {self.log_tail()}"
                    ) from exc
                time.sleep(0.05)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # by pid: SIGTERM to this child only
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


# --- the bench ---------------------------------------------------------------------------------------


class _Stream:
    """What one member has had of one publisher. Sequence numbers are per publisher, from 1."""

    __slots__ = ("gaps", "highest")

    def __init__(self) -> None:
        self.highest = 0
        self.gaps: set[int] = set()


class _Receiver:
    __slots__ = ("duplicates", "node", "received", "reordered", "room", "streams")

    def __init__(self, node: int, room: int) -> None:
        self.node = node
        self.room = room
        self.streams: dict[int, _Stream] = {}  # publisher key -> what arrived from it
        self.received = 0
        self.duplicates = 0
        self.reordered = 0


@dataclass
class _Publisher:
    ws: FastWebSocket
    node: int
    room: int
    index: int  # the connection's index: publishers are scheduled in this order
    key: int = 0  # carried in every message ("p"): its position in Bench.publishers
    pending: dict[int, int] = field(default_factory=dict)  # ack id -> seq
    acked: set[int] = field(default_factory=set)
    last_acked: int = 0
    next_id: int = 0
    seq: int = 0
    window: asyncio.Semaphore | None = None


class Bench:
    def __init__(
        self, options: Options, ports: list[int], node_pids: list[int], redis_pid: int | None
    ) -> None:
        self.o = options
        self.ports = ports
        self.pids = node_pids
        self.redis_pid = redis_pid
        self.rooms = [f"bench-{os.getpid()}-{r}" for r in range(options.rooms)]
        self.sockets: list[FastWebSocket] = []
        self.receivers: list[_Receiver] = []
        self.publishers: list[_Publisher] = []
        self.room_publishers: list[list[_Publisher]] = [[] for _ in self.rooms]
        self.latencies: list[float] = []
        self.published = 0
        self.first_publish = 0.0
        self.last_receipt = 0.0
        self.closed: dict[int, int] = {}
        self.other: dict[str, int] = {}
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
        loop = asyncio.get_running_loop()
        connected: asyncio.Future[None] = loop.create_future()

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
        ws.on_close = self.on_closed
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

    def on_closed(self, code: int) -> None:
        self.closed[code] = self.closed.get(code, 0) + 1

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
            kind = frame[:2].decode(errors="replace")
            self.other[kind] = self.other.get(kind, 0) + 1

    def reader(
        self, ws: FastWebSocket, receiver: _Receiver, publisher: _Publisher | None
    ) -> Callable[[bytes, bool], None]:
        perf = time.perf_counter
        latencies = self.latencies
        decode = self.decode

        def on_message(frame: bytes, text: bool) -> None:
            if frame.startswith(b'42["msg"'):
                now = perf()
                t, sender, seq = decode(frame)
                latencies.append(now - t)
                self.last_receipt = now
                _account(receiver, sender, seq)
            elif frame.startswith(b"43") and publisher is not None:  # 43<id>[...]: the ack
                self.acknowledge(publisher, int(frame[2 : frame.index(b"[")]))
            else:
                self.on_other(ws, frame)

        return on_message

    def acknowledge(self, publisher: _Publisher, ack_id: int) -> None:
        seq = publisher.pending.pop(ack_id, None)
        if seq is None:
            self.other["43?"] = self.other.get("43?", 0) + 1
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
        self.published += 1
        publisher.ws.send(f'42{ack_id}["pub",{json.dumps(data, separators=(",", ":"))}]')

    def has_everything(self, receiver: _Receiver) -> bool:
        """Whether ``receiver`` has, without gaps, up to the last acknowledged publish of its room's publishers."""
        for publisher in self.room_publishers[receiver.room]:
            if publisher.last_acked:
                stream = receiver.streams.get(publisher.key)
                if stream is None or stream.highest < publisher.last_acked or stream.gaps:
                    return False
        return True

    async def wait_for_deliveries(self) -> bool:
        """Until every publish is acknowledged and every member has all of them (or ``drain``)."""
        deadline = time.perf_counter() + self.o.drain
        while time.perf_counter() < deadline:
            if not any(p.pending for p in self.publishers) and all(
                self.has_everything(r) for r in self.receivers
            ):
                return True
            await asyncio.sleep(0.01)
        return False

    async def settle(self) -> bool:
        """``settle`` seconds, then until the nodes use under 5 % of a core (or ``max_settle``)."""
        await asyncio.sleep(self.o.settle)
        deadline = time.perf_counter() + self.o.max_settle
        while time.perf_counter() < deadline:
            before = cpu_of(self.pids)
            await asyncio.sleep(0.5)
            if sum(cpu_of(self.pids).values()) - sum(before.values()) < 0.025:
                return True
        return False

    # --- the run ---------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        o = self.o
        rss_before = rss_of(self.pids)
        opened = time.perf_counter()
        await self.open_all()
        open_s = time.perf_counter() - opened
        settled = time.perf_counter()
        quiet = await self.settle()
        settle_s = time.perf_counter() - settled
        rss_after = rss_of(self.pids)
        result: dict[str, Any] = {
            "scenario": o.scenario,
            "server": "socket.io",
            "nodes": len(self.ports),
            "pids": self.pids,
            "redis_pid": self.redis_pid,
            "connections": len(self.sockets),
            "open_s": round(open_s, 2),
            "settle_s": round(settle_s, 2),
            "settled": quiet,
            "rss_kib_per_connection": per(
                sum(rss_after.values()) - sum(rss_before.values()), len(self.sockets)
            ),
            "rss_kib_before": rss_before,
            "rss_kib": rss_after,
        }
        if not o.idle:
            result.update(await self.measure())
        result["closed_by_server"] = {str(k): v for k, v in sorted(self.closed.items())}
        result["other_packets"] = dict(sorted(self.other.items()))
        for ws in self.sockets:
            ws.on_close = lambda code: None
            ws.close()
        await asyncio.sleep(0.2)
        return result

    async def measure(self) -> dict[str, Any]:
        o = self.o
        redis_pids = [self.redis_pid] if self.redis_pid else []
        before = CpuSnapshot.take(self.pids, redis_pids)
        self.first_publish = time.perf_counter()
        publish_s = await publish_for(
            o.duration, self.publishers, self.publish_one, rate=o.rate, window=o.window
        )
        complete = await self.wait_for_deliveries()
        after = CpuSnapshot.take(self.pids, redis_pids)
        window = max(self.last_receipt, self.first_publish + publish_s) - self.first_publish
        node_cpu = before.node_cpu_until(after) or 0.0
        deliveries = sum(r.received for r in self.receivers)
        latencies = sorted(self.latencies)
        accounting = self.account()
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
            "duration_s": round(publish_s, 2),
            "published": self.published,
            "acked": sum(len(p.acked) for p in self.publishers),
            "publish_rate": round(self.published / publish_s, 1),
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / window, 1) if window > 0 else None,
            "deliveries_per_publication": per(deliveries, self.published),
            "latency_ms": latency_ms(latencies),
            "complete": complete,
            "drain_s": o.drain,
            **accounting,
            **before.figures_until(after),
            "cpu_us_per_delivery": per(node_cpu * 1e6, deliveries),
            "cpu_us_per_publication": per(node_cpu * 1e6, self.published),
            "window_s": round(window, 3),
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
                stream = r.streams.get(publisher.key) or _Stream()
                missing = stream.gaps | set(range(stream.highest + 1, publisher.last_acked + 1))
                lost = sum(1 for seq in missing if seq in publisher.acked)
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


def _account(receiver: _Receiver, sender: int, seq: int) -> None:
    receiver.received += 1
    stream = receiver.streams.get(sender)
    if stream is None:
        stream = receiver.streams[sender] = _Stream()
    if seq > stream.highest:
        if seq > stream.highest + 1:
            stream.gaps.update(range(stream.highest + 1, seq))
        stream.highest = seq
    elif seq in stream.gaps:
        stream.gaps.discard(seq)
        receiver.reordered += 1
    else:
        receiver.duplicates += 1


def _per_node(nodes: Iterable[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in nodes:
        counts[f"n{node + 1}"] = counts.get(f"n{node + 1}", 0) + 1
    return dict(sorted(counts.items()))


# --- versions, table, main ---------------------------------------------------------------------------


def versions(node_bin: str, valkey_binary: str | None) -> dict[str, str]:
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        found["node"] = subprocess.run(
            [node_bin, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    lock = SOCKETIO_DIR / "package-lock.json"
    if lock.exists():
        packages = json.loads(lock.read_text()).get("packages", {})
        for name in ("socket.io", "engine.io", "ws", "@socket.io/redis-adapter", "redis"):
            entry = packages.get(f"node_modules/{name}")
            if entry:
                found[name] = entry.get("version", "?")
    if valkey_binary:
        try:
            out = subprocess.run(
                [valkey_binary, "--version"], capture_output=True, text=True, timeout=10
            ).stdout
            found["valkey"] = out.split("v=")[1].split()[0] if "v=" in out else out.strip()
        except (OSError, IndexError):
            pass
    return found


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


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--nodes", type=int, help="socket.io node processes (default 2)")
    parser.add_argument("--connections", type=int)
    parser.add_argument("--rooms", type=int, help="rooms of connections/rooms members each")
    parser.add_argument("--publish-from", choices=["dedicated", "members"])
    parser.add_argument("--rate", type=float)
    parser.add_argument("--window", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--drain", type=float)
    parser.add_argument("--connect-concurrency", type=int)
    parser.add_argument("--max-settle", type=float)
    parser.add_argument("--max-run", type=float, help="seconds the whole run may take (default 300)")
    parser.add_argument("--node-bin", help="the node executable (default: node on PATH)")
    parser.add_argument(
        "--wait-quiet", type=float, help="seconds at most to wait for an idle machine first (60)"
    )
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(SCENARIOS[args.scenario])
    for name in ("nodes", "connections", "rooms", "publish_from", "rate", "window", "duration", "drain",
                 "connect_concurrency", "max_settle", "max_run", "node_bin", "wait_quiet"):  # fmt: skip
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    options = Options(scenario=args.scenario, **values)
    if options.rooms < 1 or options.connections % options.rooms:
        parser.error(f"--connections ({options.connections}) must be a multiple of --rooms ({options.rooms})")
    return options


def wait_for_quiet_machine(limit: float) -> dict[str, Any]:
    """Wait (at most ``limit`` s) until the whole machine is under 0.15 core busy over 1 s.

    The benchmark lock keeps benchmarks apart, not everything else: a profile being
    post-processed next door takes one of the two cores. Reported, never fatal.
    """
    started = time.monotonic()
    busy = 0.0
    while True:
        before = busy_seconds()
        time.sleep(1.0)
        busy = busy_seconds() - before
        if busy < 0.15 or time.monotonic() - started >= limit:
            return {
                "quiet": busy < 0.15,
                "waited_s": round(time.monotonic() - started, 1),
                "busy_cores": round(busy, 2),
            }


async def _bounded(bench: Bench, limit: float) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        return await bench.run()


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    if not (SOCKETIO_DIR / "node_modules" / "socket.io").is_dir():
        print(f"run `npm ci` in {SOCKETIO_DIR} first", file=sys.stderr)
        return 2
    raise_open_file_limit(o.connections + o.rooms + 512)  # the nodes inherit it
    machine = wait_for_quiet_machine(o.wait_quiet)
    if not machine["quiet"]:
        print(
            f"socketio_bench: machine still busy ({machine['busy_cores']} cores) after {machine['waited_s']} s; "
            "running anyway (see others_cpu_s)",
            file=sys.stderr,
        )
    log_dir = tempfile.mkdtemp(prefix="socketio-bench-")
    valkey = ValkeyServer()
    nodes: list[NodeProcess] = []
    try:
        valkey.start()
        for i in range(o.nodes):
            node = NodeProcess(i, valkey.url, log_dir, o.node_bin)
            node.start()
            nodes.append(node)
        for node in nodes:
            node.wait_listening(30.0)
        time.sleep(0.5)  # let the nodes finish starting (JIT, adapter subscriptions) before RSS "before"
        bench = Bench(o, [n.port for n in nodes], [n.pid for n in nodes], valkey.pid)
        try:
            import uvloop
        except ImportError:
            result = asyncio.run(_bounded(bench, o.max_run))
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                result = runner.run(_bounded(bench, o.max_run))
        result["machine_before"] = machine
        result["versions"] = versions(o.node_bin, valkey.binary or find_server_binary())
        for node in nodes:
            if node.process is not None and node.process.poll() is not None:
                result.setdefault("node_exits", []).append(node.log_tail())
    finally:
        for node in nodes:
            node.stop()
        valkey.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    print(table(result), file=sys.stderr, flush=True)
    failed = result.get("lost") or result.get("duplicates") or result.get("complete") is False
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
