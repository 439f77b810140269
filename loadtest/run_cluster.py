"""Run one command against a fresh local cluster, then stop the cluster (``make loadtest``, ``make bench``).

    python -m loadtest.run_cluster --nodes 2 -- python -m loadtest.fanout --scenario steady

The cluster is ``tidings up``'s (server/cluster.py): an embedded Valkey and N nodes on
free ports. The command gets ``--nodes URL...`` appended (space-separated for the
fan-out benchmark; comma-separated for locust, detected by the program name) and
``--redis-pid`` for the benchmark, and runs with ``TIDINGS_JWT_SECRET`` set to the
cluster's secret. The exit code is the command's.
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else list(args.command)
    if not command:
        parser.error("give the command to run after --")

    base = _free_port_block(args.nodes)
    environ = {k: v for k, v in os.environ.items() if k != "TIDINGS_REDIS_URL" or v}
    environ.update(BENCH_ENV)
    cluster = LocalCluster(args.nodes, "127.0.0.1", base, environ)
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
            if cluster.valkey is not None and cluster.valkey.pid is not None:
                command += ["--redis-pid", str(cluster.valkey.pid)]
        child_env = {**os.environ, "TIDINGS_JWT_SECRET": cluster.environ["TIDINGS_JWT_SECRET"]}
        return subprocess.call(command, env=child_env)
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
