"""Real multi-node clusters for tests: N ``tidings serve`` processes on free ports, one Redis.

``start_cluster`` is a plain (sync) context manager, so a module-scoped fixture can
share one cluster between tests and a test can start its own. The nodes share a key
prefix, one JWT secret (``node.SECRET``) and one API key (``node.API_KEY``). They are
torn down — terminate, wait, kill — however the block ends; on Linux they also get
SIGTERM if the test process itself dies.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tidings.server.devcluster.valkey import die_with_parent

from .node import API_KEY, SECRET
from .ports import free_port
from .timing import UNIT

__all__ = ["Cluster", "NodeProcess", "start_cluster"]


@dataclass
class NodeProcess:
    """One ``tidings serve`` child process."""

    node_id: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye, as when a machine dies."""
        self.process.kill()
        self.process.wait(10 * UNIT)

    def freeze(self) -> None:
        """SIGSTOP: the node holds its sockets but does nothing (a hung node)."""
        self.process.send_signal(signal.SIGSTOP)

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""


@dataclass
class Cluster:
    redis_url: str
    key_prefix: str
    nodes: list[NodeProcess] = field(default_factory=list)

    @property
    def ws_urls(self) -> list[str]:
        return [node.ws_url for node in self.nodes]


def healthz_node(base_url: str, *, timeout: float = 1.0) -> str | None:
    """The node id a node's ``/healthz`` answers with, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=timeout) as response:
            node = json.loads(response.read()).get("node")
    except (OSError, ValueError, http.client.HTTPException):
        # HTTPException: polling a port nobody listens on yet can make the kernel connect the socket to
        # itself (TCP self-connect, the port being in the ephemeral range): the request comes back as the
        # "status line".
        return None
    return node if isinstance(node, str) else None


def _node_id_of(port: int) -> str | None:
    return healthz_node(f"http://127.0.0.1:{port}")


def _spawn(node_id: str, port: int, env: Mapping[str, str], log_dir: Path) -> NodeProcess:
    log = log_dir / f"{node_id}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tidings.server", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"],
            env={**env, "TIDINGS_NODE_ID": node_id},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # fmt: skip
    return NodeProcess(node_id, port, process, log)


def _stop(nodes: list[NodeProcess], timeout: float) -> None:
    for node in nodes:
        if node.alive():
            with contextlib.suppress(ProcessLookupError):
                node.process.send_signal(signal.SIGCONT)  # a frozen node cannot act on SIGTERM
                node.process.terminate()
    deadline = time.monotonic() + timeout
    for node in nodes:
        try:
            node.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


@contextlib.contextmanager
def start_cluster(
    count: int,
    *,
    redis_url: str,
    key_prefix: str,
    env: Mapping[str, str] | None = None,
    node_env: Mapping[str, Mapping[str, str]] | None = None,
    start_timeout: float = 30 * UNIT,
) -> Iterator[Cluster]:
    """Start ``count`` nodes (``node-1``...) and wait until each answers ``/healthz`` with its id.

    Args:
        env: extra ``TIDINGS_*`` variables for every node.
        node_env: extra variables for some nodes, by node id (e.g. ``{"node-1": {"TIDINGS_JOBS": "off"}}``).
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    base.update(
        TIDINGS_REDIS_URL=redis_url,
        TIDINGS_KEY_PREFIX=key_prefix,
        TIDINGS_JWT_SECRET=SECRET,
        TIDINGS_API_KEYS=API_KEY,
    )
    base.update(env or {})
    cluster = Cluster(redis_url, key_prefix)
    envs = {f"node-{i}": {**base, **(node_env or {}).get(f"node-{i}", {})} for i in range(1, count + 1)}
    with tempfile.TemporaryDirectory(prefix="tidings-cluster-") as log_dir:
        try:
            for i in range(1, count + 1):
                cluster.nodes.append(_spawn(f"node-{i}", free_port(), envs[f"node-{i}"], Path(log_dir)))
            deadline = time.monotonic() + start_timeout
            for index, node in enumerate(cluster.nodes):
                attempts = 0
                while _node_id_of(node.port) != node.node_id:
                    if not node.alive():
                        if "address already in use" in node.log_tail().lower() and attempts < 3:
                            attempts += 1  # free_port() raced with someone else: try another port
                            node = cluster.nodes[index] = _spawn(
                                node.node_id, free_port(), envs[node.node_id], Path(log_dir)
                            )
                            continue
                        raise AssertionError(f"{node.node_id} exited while starting:\n{node.log_tail()}")
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{node.node_id} did not answer /healthz:\n{node.log_tail()}")
                    time.sleep(0.05)
            yield cluster
        finally:
            _stop(cluster.nodes, 10 * UNIT)
