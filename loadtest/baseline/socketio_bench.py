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
    connects  5,000 connects (handshake + ``40`` with ``?room=``, 250 rooms of 20), 200 in flight:
            CPU per connect, connects/s, latency, Redis commands per connect (loadtest/bench/connects.py);
            with ``--announce-joins`` the app also tells each room's members of every join,
            on every node, as Tidings' ``join`` push does

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest.bench import connects, driver  # noqa: E402
from loadtest.bench.socketio_adapter import Options, SocketIOAdapter, table  # noqa: E402
from loadtest.benchkit import raise_open_file_limit  # noqa: E402
from loadtest.processes import NodeProcess, free_port, stop_all  # noqa: E402
from loadtest.procstat import busy_seconds  # noqa: E402
from tidings.server.devcluster.valkey import ValkeyServer, find_server_binary  # noqa: E402

SOCKETIO_DIR = HERE / "socketio"
SERVER_JS = SOCKETIO_DIR / "server.js"

SCENARIOS: dict[str, dict[str, Any]] = {
    "steady": {"connections": 1000, "rate": 50.0, "duration": 15.0},
    "burst": {"connections": 1000, "rate": 0.0, "window": 16, "duration": 15.0},
    # fanout.py's rooms: every member publishes to its own room, 1 msg/s each, spread evenly.
    "rooms": {"connections": 1000, "rooms": 200, "publish_from": "members", "rate": 1.0, "duration": 15.0},
    "idle": {"connections": 5000, "idle": True, "duration": 0.0},
    "connects": connects.SCENARIO,  # issue 16: measured exactly as fanout.py --scenario connects
}


def start_node(
    index: int, redis_url: str, log_dir: str, node_bin: str, *, announce_joins: bool = False
) -> NodeProcess:
    """One ``node server.js`` on a free port of 127.0.0.1, in a process group of its own."""
    port = free_port()
    env = dict(os.environ, PORT=str(port), HOST="127.0.0.1", REDIS_URL=redis_url)
    env["ANNOUNCE_JOINS"] = "1" if announce_joins else "0"
    env.pop("NODE_OPTIONS", None)
    return NodeProcess.spawn(
        f"node {index + 1}",
        port,
        [node_bin, str(SERVER_JS)],
        env=env,
        log=Path(log_dir) / f"node-{index + 1}.log",
        cwd=SOCKETIO_DIR,
        process_group=True,
    )


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


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--nodes", type=int, help="socket.io node processes (default 2)")
    driver.add_run_arguments(parser)
    parser.add_argument("--max-run", type=float, help="seconds the whole run may take (default 300)")
    parser.add_argument("--node-bin", help="the node executable (default: node on PATH)")
    parser.add_argument(
        "--announce-joins",
        action="store_const",
        const=True,
        help="the app tells a room's other members of each join, on every node (Tidings' join push)",
    )
    parser.add_argument(
        "--wait-quiet", type=float, help="seconds at most to wait for an idle machine first (60)"
    )
    args = parser.parse_args(argv)
    values = driver.scenario_values(
        SCENARIOS, args, (*driver.RUN_OPTIONS, "nodes", "max_run", "node_bin", "wait_quiet", "announce_joins")
    )
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
        nodes += [
            start_node(i, valkey.url, log_dir, o.node_bin, announce_joins=o.announce_joins)
            for i in range(o.nodes)
        ]
        for node in nodes:
            node.wait_listening(30.0)
        time.sleep(0.5)  # let the nodes finish starting (JIT, adapter subscriptions) before RSS "before"
        adapter = SocketIOAdapter(o, [n.port for n in nodes], [n.pid for n in nodes], valkey.pid)
        if o.scenario == "connects":
            result = driver.run_on_uvloop(lambda: _connects(o, nodes, valkey.pid))
        else:
            result = driver.run_on_uvloop(lambda: _bounded(adapter, o))
        result["machine_before"] = machine
        result["announce_joins"] = o.announce_joins
        result["versions"] = versions(o.node_bin, valkey.binary or find_server_binary())
        for node in nodes:
            if not node.alive():
                result.setdefault("node_exits", []).append(node.log_tail(2000))
    finally:
        stop_all(nodes, 5.0)
        valkey.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    driver.print_result(result, connects.table if o.scenario == "connects" else table)
    failed = result.get("lost") or result.get("duplicates") or result.get("complete") is False
    return 1 if failed else 0


async def _bounded(adapter: SocketIOAdapter, options: Options) -> dict[str, Any]:
    async with asyncio.timeout(options.max_run):
        return await driver.run(adapter, options)


async def _connects(options: Options, nodes: list[NodeProcess], redis_pid: int | None) -> dict[str, Any]:
    async with asyncio.timeout(options.max_run):
        return await connects.run_socketio(
            options.connections,
            options.rooms,
            options.connect_concurrency,
            [n.port for n in nodes],
            [n.pid for n in nodes],
            redis_pid,
        )


if __name__ == "__main__":
    sys.exit(main())
