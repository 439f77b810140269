"""The ``connects`` scenario: what opening a connection costs the server, the same way for every server.

    python -m loadtest.run_cluster --nodes 2 -- python -m loadtest.fanout --scenario connects
    python loadtest/baseline/socketio_bench.py --scenario connects

N connections (5,000) are opened with at most C handshakes in flight (200), connection
``i`` on node ``i % nodes`` and in room ``i // (N/R)`` (250 rooms of 20: a room's members
alternate between the nodes). One connection is: TCP connect, the WebSocket handshake, and
the protocol's connect with its first room, until the server's answer:

* Tidings: ``{"id":1,"op":"connect","token":...,"subscribe":[{"channel":"room:..."}]}``
  until its reply (the personal ``user:`` channel is subscribed by the node itself);
* socket.io: ``GET /socket.io/?EIO=4&transport=websocket&room=R``, then ``40`` until
  ``40{"sid":...}`` (the app joins the room named in the query).

Everything a connection sends is made before the timed phase (the JWTs included: the bench
does no crypto while timing). Measured over the phase, from the first TCP connect to the last
answer: the node processes' utime + stime per connect, Redis's CPU per connect, connects per
second, each connection's latency (from starting its TCP connect until the answer arrived:
taken in the frame callback, not when the waiting coroutine resumes), failures (by reason),
and ``INFO commandstats`` before and after: Redis commands per connect by name. Then the
bench waits for the nodes to go quiet (work a connect leaves behind: presence, join pushes)
and reports the same figures up to then, and the nodes' RSS growth per connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from loadtest.bench.dial import Refused, dial, failure_reason
from loadtest.bench.driver import run_on_uvloop, settle
from loadtest.bench.machine import process_ticks, top_users
from loadtest.bench.redis_stats import CommandStats, listening_ports, read_commandstats
from loadtest.bench.tidings_adapter import BenchOptions, TidingsAdapter, node_urls
from loadtest.benchkit import CpuSnapshot, latency_ms, per, raise_open_file_limit
from loadtest.fastws import FastWebSocket, OnMessage
from loadtest.procstat import rss_of

__all__ = [
    "ConnectsRun",
    "Dialer",
    "SocketIODialer",
    "TidingsDialer",
    "redis_port_of",
    "run_connects",
    "run_socketio",
    "run_tidings",
    "table",
]

SCENARIO = {"connections": 5000, "rooms": 250, "connect_concurrency": 200}


class Dialer(Protocol):
    """One server's connect: where connection ``i`` goes, what it sends, and what its answer is."""

    server: str

    def target(self, index: int) -> tuple[str, str | None, str]:
        """(WebSocket URI, subprotocol, the first message), all made before the timed phase."""
        ...

    def accept(self, ws: FastWebSocket, frame: bytes) -> Any:
        """The answer in ``frame`` (anything but None), None while it has not come; raises Refused."""
        ...

    def node_of(self, index: int, answer: Any) -> str:
        """The node that holds connection ``index``."""
        ...


@dataclass
class TidingsDialer:
    """Tidings: connect with the first room; the JWTs are made before (``tokens``)."""

    ws_urls: Sequence[str]
    tokens: Sequence[str]
    rooms: Sequence[str]
    members: int
    server: str = "tidings"
    _messages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._messages = [
            json.dumps(
                {"id": 1, "op": "connect", "token": token, "subscribe": [{"channel": self.room(i)}]},
                separators=(",", ":"),
            )
            for i, token in enumerate(self.tokens)
        ]

    def room(self, index: int) -> str:
        return self.rooms[index // self.members]

    def target(self, index: int) -> tuple[str, str | None, str]:
        return self.ws_urls[index % len(self.ws_urls)], "tidings.json", self._messages[index]

    def accept(self, ws: FastWebSocket, frame: bytes) -> Any:
        for line in frame.split(b"\n"):
            if not line or line.startswith(b'{"push"'):
                continue  # a push (join) before the reply
            reply = json.loads(line)
            if reply.get("id") != 1:
                continue
            if "error" in reply:
                raise Refused(f"error {reply['error'].get('code')}")
            refused = [c for c, state in reply["result"]["channels"].items() if "error" in state]
            if refused:
                raise Refused(f"channel refused: {refused[0]}")
            return reply["result"]
        return None

    def node_of(self, index: int, answer: Any) -> str:
        return str(answer["node"])


@dataclass
class SocketIODialer:
    """socket.io: the Engine.IO WebSocket handshake with ``?room=``, then ``40`` until ``40{"sid":...}``."""

    ports: Sequence[int]
    rooms: Sequence[str]
    members: int
    server: str = "socket.io"

    def target(self, index: int) -> tuple[str, str | None, str]:
        room = self.rooms[index // self.members]
        port = self.ports[index % len(self.ports)]
        return f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&room={room}", None, "40"

    def accept(self, ws: FastWebSocket, frame: bytes) -> Any:
        if frame == b"2":  # Engine.IO ping
            ws.send("3")
        elif frame.startswith(b"40"):
            return True
        elif frame.startswith(b"44"):
            raise Refused(f"connect error {frame[:100]!r}")
        return None  # 0{...}: the Engine.IO open packet

    def node_of(self, index: int, answer: Any) -> str:
        return f"node-{index % len(self.ports) + 1}"


@dataclass
class ConnectsRun:
    """What the timed phase produced."""

    sockets: list[FastWebSocket] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    by_node: dict[str, int] = field(default_factory=dict)
    frames_after: int = 0  # frames received after the answers (Tidings: join pushes)

    def after_answer(self, ws: FastWebSocket) -> OnMessage:
        def on_message(frame: bytes, text: bool) -> None:
            self.frames_after += 1
            if frame == b"2":  # socket.io's ping, from its 25 s timer
                ws.send("3")

        return on_message


async def _open_all(dialer: Dialer, count: int, concurrency: int, timeout: float) -> ConnectsRun:
    """Open ``count`` connections with ``concurrency`` workers (so at most that many in flight)."""
    run = ConnectsRun()
    targets = [dialer.target(i) for i in range(count)]
    next_index = iter(range(count))
    perf = time.perf_counter

    async def worker() -> None:
        for index in next_index:
            uri, subprotocol, message = targets[index]
            started = perf()
            try:
                ws, at, answer = await dial(uri, subprotocol, message, dialer.accept, timeout=timeout)
            except Exception as exc:
                reason = failure_reason(exc)
                run.failures[reason] = run.failures.get(reason, 0) + 1
                continue
            ws.on_message = run.after_answer(ws)
            run.sockets.append(ws)
            run.latencies.append(at - started)
            node = dialer.node_of(index, answer)
            run.by_node[node] = run.by_node.get(node, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return run


def redis_port_of(redis_pids: Sequence[int]) -> int | None:
    """The port the first Redis pid listens on (None when unknown: no commandstats then)."""
    for pid in redis_pids[:1]:
        try:
            ports = listening_ports(pid)
        except OSError:
            return None
        return ports[0] if ports else None
    return None


def _stats(port: int | None) -> CommandStats | None:
    if port is None:
        return None
    try:
        return read_commandstats(port)
    except OSError as exc:
        print(f"connects: INFO commandstats failed: {exc!r}", file=sys.stderr)
        return None


@dataclass
class _Reading:
    """The nodes', Redis's and the bench's CPU, and Redis's command counts, at one moment."""

    cpu: CpuSnapshot
    stats: CommandStats | None
    at: float

    @classmethod
    def take(cls, pids: list[int], redis_pids: list[int], port: int | None) -> _Reading:
        return cls(CpuSnapshot.take(pids, redis_pids), _stats(port), time.perf_counter())


async def run_connects(
    dialer: Dialer,
    *,
    connections: int,
    rooms: int,
    concurrency: int,
    pids: list[int],
    redis_pids: list[int],
    redis_port: int | None,
    timeout: float = 60.0,
    max_settle: float = 60.0,
) -> dict[str, Any]:
    """Open the connections, measure the phase and what follows until the nodes are quiet, close."""
    raise_open_file_limit(connections + 512)
    rss_before = rss_of(pids)
    processes = process_ticks()
    before = _Reading.take(pids, redis_pids, redis_port)
    run = await _open_all(dialer, connections, concurrency, timeout)
    after = _Reading.take(pids, redis_pids, redis_port)
    others = top_users(processes, process_ticks(), exclude=[*pids, *redis_pids, os.getpid()])
    quiet = await settle(pids, 1.0, max_settle)
    settled = _Reading.take(pids, redis_pids, redis_port)
    rss_after = rss_of(pids)
    for ws in run.sockets:
        ws.on_close = _ignore
        ws.close()
    await asyncio.sleep(0.5)  # let the close frames go out
    result: dict[str, Any] = {
        "scenario": "connects",
        "server": dialer.server,
        "nodes": len(pids),
        "pids": pids,
        "connections": connections,
        "rooms": rooms,
        "members_per_room": connections // rooms if rooms else 0,
        "concurrency": concurrency,
        "connected": len(run.sockets),
        "failures": sum(run.failures.values()),
        "failures_by_reason": run.failures,
        "by_node": dict(sorted(run.by_node.items())),
        "frames_after_connect": run.frames_after,
        "others_top": others,  # who used the CPU that others_cpu_s counts, over the phase
    }
    result.update(_phase_figures(before, after, len(run.sockets), run.latencies))
    result.update(_quiet_figures(before, settled, len(run.sockets), quiet))
    growth = sum(rss_after.values()) - sum(rss_before.values()) if rss_before and rss_after else None
    result["rss_kib_before"] = rss_before
    result["rss_kib_after"] = rss_after
    result["rss_kib_per_connection"] = per(growth, len(run.sockets)) if growth is not None else None
    result["complete"] = result["failures"] == 0
    return result


def _phase_figures(
    before: _Reading, after: _Reading, connects: int, latencies: list[float]
) -> dict[str, Any]:
    window = after.at - before.at
    cpu = before.cpu.figures_until(after.cpu)
    node_cpu = cpu["node_cpu_s"]
    redis_cpu = cpu["redis_cpu_s"]
    figures: dict[str, Any] = {
        "connect_s": round(window, 3),
        "connects_per_s": round(connects / window, 1) if window > 0 else None,
        "latency_ms": latency_ms(sorted(latencies)),
        **cpu,
        "cpu_us_per_connect": per(node_cpu * 1e6, connects) if node_cpu is not None else None,
        "user_us_per_connect": per(cpu["node_user_s"] * 1e6, connects),
        "sys_us_per_connect": per(cpu["node_sys_s"] * 1e6, connects),
        "redis_cpu_us_per_connect": per(redis_cpu * 1e6, connects) if redis_cpu is not None else None,
        # The bench near the window: the bench, not the nodes, set the pace.
        "bench_bound": cpu["bench_cpu_s"] > 0.85 * window,
    }
    if before.stats is not None and after.stats is not None:
        commands = before.stats.until(after.stats)
        figures["redis_calls_per_connect"] = per(commands.total_calls, connects)
        figures["redis_usec_per_connect"] = per(commands.total_usec, connects)
        figures["redis_commands_per_connect"] = commands.per(connects)
    return figures


def _quiet_figures(before: _Reading, settled: _Reading, connects: int, quiet: bool) -> dict[str, Any]:
    """The same, from the first connect until the nodes were quiet again (presence, join pushes...)."""
    cpu = before.cpu.figures_until(settled.cpu)
    node_cpu, redis_cpu = cpu["node_cpu_s"], cpu["redis_cpu_s"]
    figures: dict[str, Any] = {
        "until_quiet_s": round(settled.at - before.at, 3),
        "settled": quiet,
        "node_cpu_until_quiet_s": node_cpu,
        "cpu_us_per_connect_until_quiet": per(node_cpu * 1e6, connects) if node_cpu is not None else None,
        "redis_cpu_us_per_connect_until_quiet": (
            per(redis_cpu * 1e6, connects) if redis_cpu is not None else None
        ),
    }
    if before.stats is not None and settled.stats is not None:
        commands = before.stats.until(settled.stats)
        figures["redis_commands_per_connect_until_quiet"] = commands.per(connects)
    return figures


def _ignore(code: int) -> None:
    pass


def run_tidings(options: BenchOptions) -> dict[str, Any]:
    """The scenario against running Tidings nodes (``fanout.py --scenario connects``), on uvloop."""
    return run_on_uvloop(lambda: _tidings(options))


async def _tidings(o: BenchOptions) -> dict[str, Any]:
    adapter = TidingsAdapter(o)  # the node pids, the run id, and tokens as fanout.py makes them
    members = o.connections // o.rooms
    rooms = [f"room:connects-{adapter.run_id}-{r}" for r in range(o.rooms)]
    urls = [node_urls(node) for node in o.nodes]
    tokens = [  # before the timed phase: no crypto in the bench while timing
        await adapter.token(f"bench-{adapter.run_id}-{i}", urls[i % len(urls)][0])
        for i in range(o.connections)
    ]
    dialer = TidingsDialer([ws for _, ws in urls], tokens, rooms, members)
    redis_pids = o.redis_pids or []
    return await run_connects(
        dialer,
        connections=o.connections,
        rooms=o.rooms,
        concurrency=o.connect_concurrency,
        pids=adapter.pids,
        redis_pids=redis_pids,
        redis_port=redis_port_of(redis_pids),
        max_settle=min(o.max_settle, 60.0),
    )


def table(result: dict[str, Any]) -> str:
    """The result as a few human lines."""
    lat = result["latency_ms"]
    lines = [
        f"{result['server']} connects: {result['connected']}/{result['connections']} connections over "
        f"{result['nodes']} node(s), {result['rooms']} rooms of {result['members_per_room']}, "
        f"{result['concurrency']} in flight; per node {result['by_node']}",
        f"  connect phase             {result['connect_s']} s ({result['connects_per_s']} connects/s)",
        f"  latency p50 / p99 / max   {lat['p50']} / {lat['p99']} / {lat['max']} ms",
        f"  node CPU per connect      {result['cpu_us_per_connect']} us "
        f"(user {result['user_us_per_connect']}, sys {result['sys_us_per_connect']}); "
        f"until quiet {result['cpu_us_per_connect_until_quiet']} us",
        f"  Redis CPU per connect     {result['redis_cpu_us_per_connect']} us; "
        f"until quiet {result['redis_cpu_us_per_connect_until_quiet']} us",
        f"  bench CPU / phase         {result['bench_cpu_s']} s / {result['connect_s']} s"
        f"{'  (BENCH-BOUND: the bench set the pace)' if result['bench_bound'] else ''}; "
        f"others {result['others_cpu_s']} s {result['others_top']}",
        f"  RSS per connection        {result['rss_kib_per_connection']} KiB",
        f"  failures                  {result['failures']} {result['failures_by_reason'] or ''}",
    ]
    if "redis_commands_per_connect" in result:
        commands = ", ".join(f"{name} {n}" for name, n in result["redis_commands_per_connect"].items())
        lines.append(
            f"  Redis calls per connect   {result['redis_calls_per_connect']} "
            f"({result['redis_usec_per_connect']} us in Redis): {commands or 'none'}"
        )
    if not result["settled"]:
        lines.append(f"  the nodes were NOT quiet {result['until_quiet_s']} s after the first connect")
    return "\n".join(lines)


async def run_socketio(
    connections: int, rooms: int, concurrency: int, ports: list[int], pids: list[int], redis_pid: int | None
) -> dict[str, Any]:
    """The scenario against socket.io nodes on ``ports`` (``socketio_bench.py --scenario connects``)."""
    room_names = [f"connects-{time.time_ns() % 10**9}-{r}" for r in range(rooms)]
    dialer = SocketIODialer(ports, room_names, connections // rooms)
    redis_pids = [redis_pid] if redis_pid else []
    return await run_connects(
        dialer,
        connections=connections,
        rooms=rooms,
        concurrency=concurrency,
        pids=pids,
        redis_pids=redis_pids,
        redis_port=redis_port_of(redis_pids),
    )
