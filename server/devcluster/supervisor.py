"""``tidings up --nodes N [--shards S [--replicas R]]``: a whole local cluster in one command.

It starts, in order: an embedded Valkey server (valkey.py) unless
``TIDINGS_REDIS_URL`` is set, or with ``--shards`` a Redis Cluster of S primaries
with R replicas each (redis_cluster.py) whose ``redis+cluster://`` URL, naming the
primaries as seeds, the nodes get; then N ``tidings serve`` processes that all listen
on the shared port with ``SO_REUSEPORT`` (the kernel spreads connections over
them) and each on its own port ``port + i``. They share one JWT secret (made up
unless ``TIDINGS_JWT_SECRET`` is set), one key prefix, and dev mode.

Guarantees: Ctrl-C or SIGTERM stops everything it started (nodes: terminate,
wait, kill; then Valkey or every server of the Redis Cluster) and removes the
temporary directory. The nodes start only once the Redis Cluster has formed. If a node dies on
its own, everything stops and the exit code is 1. The children run in their own
process group, so a Ctrl-C in the terminal reaches them only through this
process, in order; on Linux they also get SIGTERM should this process die
without cleaning up.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import TextIO

from tidings.server.devcluster import redis_cluster
from tidings.server.devcluster.topology import TopologyError
from tidings.server.devcluster.valkey import ValkeyServer, ValkeyUnavailable, die_with_parent

__all__ = ["ClusterError", "LocalCluster", "run_cluster"]

_STOP_TIMEOUT = 10.0  # seconds nodes get to shut down gracefully (uvicorn's own grace is 5 s)


class ClusterError(RuntimeError):
    """The cluster could not be started; the message says what went wrong."""


@dataclass
class NodeProcess:
    node_id: str
    port: int
    process: subprocess.Popen[bytes]


def _probe_host(host: str) -> str:
    """An address to reach a server listening on ``host`` (a wildcard means localhost)."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _healthz(host: str, port: int) -> str | None:
    """The node id ``/healthz`` names, or None while the node does not answer."""
    authority = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{authority}:{port}/healthz", timeout=1.0) as response:
            body = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    node = body.get("node") if isinstance(body, dict) else None
    return node if isinstance(node, str) else None


class LocalCluster:
    """Valkey or a Redis Cluster (unless a URL is given) plus N node processes; :meth:`stop` undoes
    whatever :meth:`start` did.

    With ``shards`` > 0 the store is a Redis Cluster of that many primaries with ``replicas``
    replicas each; otherwise one server.
    """

    def __init__(
        self,
        nodes: int,
        host: str,
        port: int,
        environ: Mapping[str, str],
        *,
        shards: int = 0,
        replicas: int = 0,
    ) -> None:
        self.nodes = nodes
        self.host = host
        self.port = port
        self.environ = dict(environ)
        self.shards = shards
        self.replicas = replicas
        self.valkey: ValkeyServer | None = None
        self.redis_cluster: redis_cluster.LocalCluster | None = None
        self.children: list[NodeProcess] = []

    @property
    def redis_url(self) -> str:
        return self.environ["TIDINGS_REDIS_URL"]

    def start(self) -> None:
        """Start the store (unless a URL is given), then the nodes; does not wait for the nodes.

        Raises:
            ClusterError: no server binary, a server did not start, or the Redis Cluster did not form.
        """
        if not self.environ.get("TIDINGS_REDIS_URL"):
            try:
                self.environ["TIDINGS_REDIS_URL"] = self._start_store()
            except (ValkeyUnavailable, TopologyError) as exc:
                raise ClusterError(str(exc)) from exc
        self.environ.setdefault("TIDINGS_JWT_SECRET", secrets.token_urlsafe(32))
        self.environ.setdefault("TIDINGS_KEY_PREFIX", "tidings")
        self.environ["TIDINGS_DEV"] = "1"
        for i in range(1, self.nodes + 1):
            node_id = f"node-{i}"
            command = [
                sys.executable, "-m", "tidings.server", "serve",
                "--host", self.host, "--port", str(self.port + i), "--shared-port", str(self.port),
                "--log-level", "warning",
            ]  # fmt: skip
            process = subprocess.Popen(
                command,
                env={**self.environ, "TIDINGS_NODE_ID": node_id},
                stdin=subprocess.DEVNULL,
                process_group=0,
                preexec_fn=die_with_parent,
            )
            self.children.append(NodeProcess(node_id, self.port + i, process))

    def _start_store(self) -> str:
        """Start one Valkey, or a Redis Cluster when ``shards`` is set; return the URL to give the nodes."""
        if self.shards:
            # Kept before start() returns, so that stop() cleans up a cluster that failed to form.
            self.redis_cluster = redis_cluster.LocalCluster(self.shards, self.replicas)
            return self.redis_cluster.start().url
        self.valkey = ValkeyServer().start()
        return self.valkey.url

    def wait_healthy(self, timeout: float, stop: threading.Event) -> bool:
        """Wait until every node answers ``/healthz`` with its id; False if ``stop`` was set first.

        Raises:
            ClusterError: a node exited, or the deadline passed.
        """
        probe = _probe_host(self.host)
        deadline = time.monotonic() + timeout
        waiting = list(self.children)
        while waiting:
            if stop.is_set():
                return False
            dead = self.dead_child()
            if dead is not None:
                raise ClusterError(
                    f"{dead.node_id} exited with code {dead.process.returncode} while starting"
                )
            waiting = [child for child in waiting if _healthz(probe, child.port) != child.node_id]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(child.node_id for child in waiting)
                raise ClusterError(f"{names} did not answer /healthz within {timeout:g} s")
            if waiting:
                stop.wait(0.1)
        return True

    def dead_child(self) -> NodeProcess | None:
        for child in self.children:
            if child.process.poll() is not None:
                return child
        return None

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop the nodes (terminate, wait, kill), then Valkey or the Redis Cluster. Idempotent."""
        for child in self.children:
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.children = []
        if self.valkey is not None:
            self.valkey.stop()
            self.valkey = None
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
            self.redis_cluster = None

    def describe(self) -> str:
        probe = _probe_host(self.host)
        where = "TIDINGS_REDIS_URL"
        if self.valkey is not None:
            where = f"embedded Valkey, data in {self.valkey.data_dir}"
        elif self.redis_cluster is not None:
            shape = f"{self.shards} primaries, {self.replicas} replica(s) each"
            where = f"local Redis Cluster of {shape}, data in {self.redis_cluster.data_dir}"
        lines = [
            f"Tidings: {len(self.children)} nodes on {self.redis_url} ({where})",
            f"  http://{probe}:{self.port}/   web UI; any node (SO_REUSEPORT)",
        ]
        lines += [f"  http://{probe}:{c.port}/   {c.node_id} (pid {c.process.pid})" for c in self.children]
        lines.append(
            'Tokens for the demo: POST /api/dev/token {"user": ...} (dev mode). Ctrl-C stops everything.'
        )
        return "\n".join(lines)


def _bad_arguments(
    nodes: int, port: int, shards: int, replicas: int, environ: Mapping[str, str]
) -> str | None:
    if not 1 <= nodes <= 64 or not 0 < port <= 65535 - nodes:
        return "--nodes must be 1-64 and --port + nodes a valid port"
    if not 0 <= shards <= 16 or not 0 <= replicas <= 4:
        return "--shards must be 1-16 and --replicas 0-4"
    if replicas and not shards:
        return "--replicas needs --shards (replicas of the Redis Cluster's primaries)"
    if shards and environ.get("TIDINGS_REDIS_URL"):
        return "--shards starts a Redis Cluster of its own: unset TIDINGS_REDIS_URL"
    return None


def run_cluster(
    nodes: int,
    host: str,
    port: int,
    *,
    shards: int = 0,
    replicas: int = 0,
    environ: Mapping[str, str] | None = None,
    health_timeout: float = 30.0,
    out: TextIO | None = None,
) -> int:
    """Run a local cluster until Ctrl-C or SIGTERM; with ``shards``, on a local Redis Cluster.

    Returns:
        0 after a requested stop; 1 if the cluster failed to start or a node died; 2 for bad arguments.
    """
    out = out if out is not None else sys.stdout
    environ = os.environ if environ is None else environ
    problem = _bad_arguments(nodes, port, shards, replicas, environ)
    if problem is not None:
        print(f"tidings up: {problem}", file=sys.stderr)
        return 2
    cluster = LocalCluster(nodes, host, port, environ, shards=shards, replicas=replicas)
    stop = threading.Event()
    restore = _on_signals((signal.SIGINT, signal.SIGTERM), lambda: stop.set())
    try:
        cluster.start()
        if not cluster.wait_healthy(health_timeout, stop):
            return 0
        print(cluster.describe(), file=out, flush=True)
        while not stop.wait(0.2):
            dead = cluster.dead_child()
            if dead is not None:
                print(
                    f"tidings up: {dead.node_id} exited with code {dead.process.returncode}", file=sys.stderr
                )
                return 1
        print("tidings up: stopping", file=out, flush=True)
        return 0
    except ClusterError as exc:
        print(f"tidings up: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        restore()


def _on_signals(signals: tuple[signal.Signals, ...], action: Callable[[], None]) -> Callable[[], None]:
    """Run ``action`` on each of ``signals``; return a function that restores the previous handlers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        action()

    previous = {sig: signal.signal(sig, handler) for sig in signals}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
