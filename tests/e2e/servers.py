"""Real ``tidings serve`` processes for the browser tests.

Each node is a subprocess on a free port of 127.0.0.1, in dev mode (so the web UI
can sign in through ``POST /api/dev/token``) with a shared JWT secret (so a token
from one node is good on every node). Nodes are stopped by the pid we started:
terminate → wait → kill, even when a test fails. The browser helpers take only
URLs, so they work the same against these single nodes and against cluster nodes.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path

from loadtest.processes import free_port

from ..support.cluster import NodeProcess, healthz_node, spawn_node
from ..support.timing import UNIT, wait_until_sync

__all__ = ["E2E_JWT_SECRET", "serve_node", "start_node", "stop_node"]

E2E_JWT_SECRET = "e2e-secret-which-is-long-enough-for-hs256-tokens"


def _healthy(node: NodeProcess) -> bool:
    if node.process.poll() is not None:
        raise AssertionError(f"node {node.node_id} exited with {node.process.returncode}; see {node.log}")
    return healthz_node(node.http_url, timeout=UNIT) == node.node_id


def start_node(
    node_id: str,
    log_dir: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    log_level: str = "warning",
) -> NodeProcess:
    """Start ``tidings serve`` on ``port`` (a free one by default) and wait until it answers /healthz.

    Dev mode is on unless ``env`` sets ``TIDINGS_DEV``.
    """
    environ = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
    environ.update({"TIDINGS_DEV": "1", "TIDINGS_JWT_SECRET": E2E_JWT_SECRET, **(env or {})})
    log_dir.mkdir(parents=True, exist_ok=True)
    node = spawn_node(node_id, free_port() if port is None else port, environ, log_dir, log_level=log_level)
    try:
        wait_until_sync(lambda: _healthy(node), timeout=15 * UNIT, what=f"node {node_id} to answer /healthz")
    except BaseException:
        stop_node(node)
        raise
    return node


def stop_node(node: NodeProcess, *, sig: signal.Signals = signal.SIGTERM) -> None:
    """Stop the node we started (SIGTERM, or ``sig``), then wait; kill it if it does not end in time."""
    node.stop(10 * UNIT, sig=sig)


@contextlib.contextmanager
def serve_node(
    node_id: str,
    log_dir: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    log_level: str = "warning",
) -> Iterator[NodeProcess]:
    """A node for the duration of the block."""
    node = start_node(node_id, log_dir, port=port, env=env, log_level=log_level)
    try:
        yield node
    finally:
        stop_node(node)
