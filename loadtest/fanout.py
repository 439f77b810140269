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
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python loadtest/fanout.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.bench import connects, driver
from loadtest.bench.tidings_adapter import BenchOptions, TidingsAdapter, table

__all__ = ["SCENARIOS", "BenchOptions", "main", "parse_args", "run", "table"]

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
    # The same shape (5 members per room, 1,000 publications/s in all) over 1,000 rooms: how the rooms and
    # Redis's work spread over the shards of a Redis Cluster (make bench runs it on 1 and 3 shards).
    "rooms1000": {
        "connections": 5000,
        "rooms": 1000,
        "publish_from": "members",
        "rate": 0.2,
        "duration": 10.0,  # 10,000 publications; opening 5,000 connections takes 10-20 s more
        "redis_idle": 2.0,
    },
    # 5,000 idle connections: ≤ 20 KiB RSS per connection.
    "idle": {"connections": 5000, "rooms": 0, "idle": True, "duration": 0.0},
    # Issue 16: 5,000 connects (connect + first room, 250 rooms of 20), 200 in flight: CPU per connect.
    "connects": connects.SCENARIO,
}


def parse_args(argv: Sequence[str] | None = None) -> BenchOptions:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fanout", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes", nargs="+", required=True, help="node URLs (http://h:p, ws://h:p/ws or h:p)"
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help="preset (other flags override it)")
    driver.add_run_arguments(parser)
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
        "--redis-pid",
        help="the backplane's pid(s), comma-separated: its CPU is reported apart; a Redis Cluster's "
        "primaries in the order of their slot ranges (an even split): CPU and rooms per shard",
    )
    parser.add_argument(
        "--key-prefix",
        default=os.environ.get("TIDINGS_KEY_PREFIX") or "tidings",
        help="the nodes' key prefix, to place rooms on shards (default $TIDINGS_KEY_PREFIX or tidings)",
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get("TIDINGS_JWT_SECRET"),
        help="JWT secret (default $TIDINGS_JWT_SECRET; without it: POST /api/dev/token)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds at least between opening and measuring, then until quiet (default 1)",
    )
    args = parser.parse_args(argv)
    names = (*driver.RUN_OPTIONS, "idle", "codec", "payload", "slow_readers", "settle")
    values = driver.scenario_values(SCENARIOS, args, names)
    if args.pids:
        values["pids"] = [int(p) for p in args.pids.split(",")]
    if args.redis_pid:
        values["redis_pids"] = [int(p) for p in args.redis_pid.split(",")]
    options = BenchOptions(
        nodes=args.nodes,
        secret=args.secret,
        key_prefix=args.key_prefix,
        scenario=args.scenario or "custom",
        **values,
    )
    if not options.idle and options.rooms < 1:
        parser.error("--rooms must be at least 1 unless --idle")
    return options


def run(options: BenchOptions) -> dict[str, Any]:
    """Run one benchmark against running nodes (on uvloop when available)."""
    if options.scenario == "connects":
        return connects.run_tidings(options)
    return driver.run_on_uvloop(lambda: driver.run(TidingsAdapter(options), options))


def main(argv: Sequence[str] | None = None) -> int:
    result = run(parse_args(argv))
    driver.print_result(result, connects.table if result.get("scenario") == "connects" else table)
    failed = result.get("lost", 0) or result.get("duplicates", 0) or result.get("reordered", 0)
    return 1 if failed or result.get("complete") is False else 0


if __name__ == "__main__":
    sys.exit(main())
