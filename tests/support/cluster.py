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
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.processes import NodeProcess, free_port, stop_all

from .node import API_KEY, SECRET
from .timing import UNIT

__all__ = ["Cluster", "NodeProcess", "healthz_node", "spawn_node", "start_cluster"]


@dataclass
class Cluster:
    redis_url: str
    key_prefix: str
    log_dir: Path
    envs: dict[str, dict[str, str]] = field(default_factory=dict)  # node id -> its environment
    nodes: list[NodeProcess] = field(default_factory=list)

    @property
    def ws_urls(self) -> list[str]:
        return [node.ws_url for node in self.nodes]

    def restart(self, index: int, node_id: str | None = None) -> NodeProcess:
        """Start node ``index`` again at once on its port (the one a balancer knows), with the cluster's
        settings, under its node id or ``node_id``; the new process replaces it (and is stopped with it)."""
        old = self.nodes[index]
        node_id = node_id or old.node_id
        env = self.envs.get(node_id) or self.envs[old.node_id]
        self.nodes[index] = spawn_node(node_id, old.port, env, self.log_dir)
        return self.nodes[index]


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


def spawn_node(
    node_id: str, port: int, env: Mapping[str, str], log_dir: Path, *, log_level: str = "warning"
) -> NodeProcess:
    """Start ``tidings serve`` as ``node_id`` on 127.0.0.1:``port``, its output in ``log_dir/<node_id>.log``."""
    command = [sys.executable, "-m", "tidings.server", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", log_level]  # fmt: skip
    return NodeProcess.spawn(
        node_id, port, command, env={**env, "TIDINGS_NODE_ID": node_id}, log=log_dir / f"{node_id}.log"
    )


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
    envs = {f"node-{i}": {**base, **(node_env or {}).get(f"node-{i}", {})} for i in range(1, count + 1)}
    with tempfile.TemporaryDirectory(prefix="tidings-cluster-") as log_dir:
        cluster = Cluster(redis_url, key_prefix, Path(log_dir), envs)
        try:
            for i in range(1, count + 1):
                cluster.nodes.append(spawn_node(f"node-{i}", free_port(), envs[f"node-{i}"], Path(log_dir)))
            deadline = time.monotonic() + start_timeout
            for index, node in enumerate(cluster.nodes):
                attempts = 0
                while _node_id_of(node.port) != node.node_id:
                    if not node.alive():
                        if "address already in use" in node.log_tail().lower() and attempts < 3:
                            attempts += 1  # free_port() raced with someone else: try another port
                            node = cluster.nodes[index] = spawn_node(
                                node.node_id, free_port(), envs[node.node_id], Path(log_dir)
                            )
                            continue
                        raise AssertionError(f"{node.node_id} exited while starting:\n{node.log_tail()}")
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{node.node_id} did not answer /healthz:\n{node.log_tail()}")
                    time.sleep(0.05)
            yield cluster
        finally:
            stop_all(cluster.nodes, 10 * UNIT)
