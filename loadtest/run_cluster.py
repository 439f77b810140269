"""Run one command against a fresh local cluster, then stop the cluster (``make loadtest``, ``make bench``).

    python -m loadtest.run_cluster --nodes 2 -- python -m loadtest.fanout --scenario steady
    python -m loadtest.run_cluster --nodes 2 --shards 3 -- python -m loadtest.fanout --scenario rooms1000

The cluster is ``tidings up``'s (server/devcluster/supervisor.py): an embedded Valkey and N
nodes on free ports; with ``--shards N`` above 1, a local Redis Cluster of N primaries (no
replicas, an even split of the slots) instead of the one Valkey, so ``--shards 1`` is what
one Redis costs (``--cluster --shards 1``: a Redis Cluster of one primary, to tell cluster
mode's own cost from sharding's). The command gets ``--nodes URL...`` appended
(space-separated for the fan-out benchmark; comma-separated for locust, detected by the
program name) and, for the benchmark, ``--redis-pid`` with every Redis server's pid,
comma-separated, in the order of the primaries' slot ranges (the first serves the lowest
slots). It runs with ``TIDINGS_JWT_SECRET`` set to the cluster's secret and
``TIDINGS_KEY_PREFIX`` to its prefix.
The exit code is the command's.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from loadtest.processes import free_port
from tidings.server.devcluster.supervisor import LocalCluster

__all__ = ["main"]

# Load generators send far more commands per connection than a person does: lift the per-connection
# command rate limit for the benchmark nodes (the limit itself is tested elsewhere).
BENCH_ENV = {"TIDINGS_COMMAND_RATE": "1000000", "TIDINGS_COMMAND_BURST": "1000000"}


def _free_port_block(count: int) -> int:
    """A base port such that base .. base+count are free now (best effort)."""
    for _ in range(50):
        base = free_port()
        if base + count >= 65535:
            continue
        try:
            held = []
            for port in range(base, base + count + 1):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError("no block of free ports found")


def _redis_pids(cluster: LocalCluster) -> list[int]:
    """The one Valkey's pid, or the Redis Cluster's primaries' in the order of their slot ranges."""
    if cluster.valkey is not None:
        return [cluster.valkey.pid] if cluster.valkey.pid is not None else []
    redis_cluster = cluster.redis_cluster
    if redis_cluster is None:
        return []  # TIDINGS_REDIS_URL given: not ours to watch
    primaries = sorted(redis_cluster.primaries, key=lambda primary: min(redis_cluster.slots_of(primary)))
    pids = [primary.pid for primary in primaries]
    return [pid for pid in pids if pid is not None] if None not in pids else []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help="Redis primaries: 1 = one embedded Valkey (default); 2-16 = a local Redis Cluster",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="a Redis Cluster even with --shards 1: cluster mode's own cost, apart from sharding's",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else list(args.command)
    if not command:
        parser.error("give the command to run after --")
    if not 1 <= args.shards <= 16:
        parser.error("--shards must be 1-16")

    base = _free_port_block(args.nodes)
    environ = {k: v for k, v in os.environ.items() if k != "TIDINGS_REDIS_URL" or v}
    environ.update(BENCH_ENV)
    shards = args.shards if args.shards > 1 or args.cluster else 0
    if shards and environ.get("TIDINGS_REDIS_URL"):
        parser.error("--shards starts a Redis Cluster of its own: unset TIDINGS_REDIS_URL")
    cluster = LocalCluster(args.nodes, "127.0.0.1", base, environ, shards=shards)
    try:
        cluster.start()
        if not cluster.wait_healthy(60.0, threading.Event()):
            return 1
        print(cluster.describe(), file=sys.stderr, flush=True)
        urls = [f"http://127.0.0.1:{child.port}" for child in cluster.children]
        if "locust" in os.path.basename(command[0]):
            command += ["--nodes", ",".join(urls)]
        else:
            command += ["--nodes", *urls]
            redis_pids = _redis_pids(cluster)
            if redis_pids:
                command += ["--redis-pid", ",".join(str(pid) for pid in redis_pids)]
        child_env = {
            **os.environ,
            "TIDINGS_JWT_SECRET": cluster.environ["TIDINGS_JWT_SECRET"],
            "TIDINGS_KEY_PREFIX": cluster.environ["TIDINGS_KEY_PREFIX"],
        }
        return subprocess.call(command, env=child_env)
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
