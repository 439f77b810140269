"""Real Redis Cluster and Sentinel topologies for the tests (server/devcluster/redis_{cluster,sentinel}.py).

The binary is ``TIDINGS_TEST_REDIS_BINARY`` when set (CI's second pass points it at
Debian's Redis 7), else the embedded Valkey. Without a binary the tests that need one skip
locally and FAIL in CI (``CI=true``); a binary that is set but missing always fails.

* ``redis_cluster`` (session): 3 primaries, no replicas, shared by every test. Its slot map
  must stay as it is: a test that kills a node or moves a slot starts its own cluster.
  Keys and channels of different tests stay apart through ``key_prefix``.
* ``fresh_cluster`` / ``fresh_sentinel``: factories of context managers for the tests that
  break things, e.g. ``with fresh_cluster(replicas=1) as cluster:``. Whatever a test
  started is stopped at its end even if it left the ``with`` block some other way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from tidings.server.devcluster.redis_cluster import LocalCluster
from tidings.server.devcluster.redis_sentinel import LocalSentinel
from tidings.server.devcluster.valkey import find_server_binary

from .tools import missing_tool

__all__ = ["fresh_cluster", "fresh_sentinel", "redis_cluster", "topology_binary"]

ClusterFactory = Callable[..., AbstractContextManager[LocalCluster]]
SentinelFactory = Callable[..., AbstractContextManager[LocalSentinel]]


@pytest.fixture(scope="session")
def topology_binary() -> str:
    """The server binary the topologies run: ``TIDINGS_TEST_REDIS_BINARY``, else the embedded Valkey."""
    chosen = os.environ.get("TIDINGS_TEST_REDIS_BINARY")
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            pytest.fail(f"TIDINGS_TEST_REDIS_BINARY={chosen} is not an executable file", pytrace=False)
        return chosen
    found = find_server_binary()
    if found is None:
        missing_tool("no Valkey/Redis server binary for the cluster and sentinel tests")
    return found


@pytest.fixture(scope="session")
def redis_cluster(topology_binary: str) -> Iterator[LocalCluster]:
    """A running Redis Cluster: 3 primaries, no replicas, an even slot split (do not change it)."""
    with LocalCluster(shards=3, replicas=0, binary=topology_binary) as cluster:
        yield cluster


@pytest.fixture
def fresh_cluster(topology_binary: str) -> Iterator[ClusterFactory]:
    """``fresh_cluster(replicas=1, shards=3)``: a context manager running a cluster of the test's own."""
    with contextlib.ExitStack() as started:

        @contextlib.contextmanager
        def make(replicas: int = 1, shards: int = 3) -> Iterator[LocalCluster]:
            cluster = LocalCluster(shards=shards, replicas=replicas, binary=topology_binary)
            started.callback(cluster.stop)  # idempotent: a second stop after the block is a no-op
            with cluster:
                yield cluster

        yield make


@pytest.fixture
def fresh_sentinel(topology_binary: str) -> Iterator[SentinelFactory]:
    """``fresh_sentinel(master_name="tidings")``: a context manager running a primary, a replica and
    three sentinels of the test's own."""
    with contextlib.ExitStack() as started:

        @contextlib.contextmanager
        def make(master_name: str = "tidings") -> Iterator[LocalSentinel]:
            sentinel = LocalSentinel(binary=topology_binary, master_name=master_name)
            started.callback(sentinel.stop)
            with sentinel:
                yield sentinel

        yield make
