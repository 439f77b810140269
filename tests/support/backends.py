"""The Redis deployments the cross-node tests run on: one server, and a 3-primary Redis Cluster.

``backend`` (session-scoped, parametrized ``single`` / ``cluster``) gives the URL the nodes get
and a few ways to look at, or break, the deployment from outside whatever its shape:

* ``client()``: a data client (redis-py's ``RedisCluster`` on a cluster, which routes by key);
* ``kill_pubsub_links()``: ``CLIENT KILL`` of every node's pub/sub link on every server;
* ``pubsub_clients()`` and ``subscribed_channels(pattern)``: what the servers see subscribed
  (``PUBSUB CHANNELS`` on one server, ``PUBSUB SHARDCHANNELS`` on each primary of a cluster).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from tidings.server.cluster.redis_client import StoreClient, close_store_client, store_client
from tidings.server.devcluster.redis_cluster import LocalCluster

__all__ = ["Backend", "backend", "backend_client"]


@dataclass(frozen=True)
class Backend:
    """One Redis deployment under test: ``name`` is ``single`` or ``cluster``."""

    name: str
    url: str
    servers: tuple[str, ...]  # a plain redis:// URL per server (per primary on a cluster)

    @property
    def sharded(self) -> bool:
        return self.name == "cluster"

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[StoreClient]:
        client = store_client(self.url)
        try:
            yield client
        finally:
            await close_store_client(client)

    @contextlib.asynccontextmanager
    async def _each_server(self) -> AsyncIterator[list[aioredis.Redis]]:
        clients = [aioredis.Redis.from_url(url) for url in self.servers]
        try:
            yield clients
        finally:
            for client in clients:
                await client.aclose()

    async def kill_pubsub_links(self) -> None:
        """Drop every node's pub/sub link on every server (the links must recover).

        By name, not ``TYPE pubsub``: a shard link with no subscription yet is not in pub/sub mode.
        """
        async with self._each_server() as clients:
            for client in clients:
                for entry in await client.client_list():
                    if str(entry.get("name", "")).endswith(":pubsub"):
                        await client.client_kill_filter(_id=entry["id"])

    async def pubsub_clients(self) -> list[dict[str, Any]]:
        """The nodes' pub/sub links on every server (named ``...:pubsub``); ``key`` is unique across servers."""
        entries = []
        async with self._each_server() as clients:
            for i, client in enumerate(clients):
                for entry in await client.client_list():
                    if str(entry.get("name", "")).endswith(":pubsub"):
                        entries.append({**entry, "key": f"{i}:{entry['id']}"})
        return entries

    async def numsub(self, name: str) -> int:
        """Subscribers of pub/sub channel ``name`` (``PUBSUB NUMSUB``, or ``SHARDNUMSUB`` on a cluster)."""
        total = 0
        async with self._each_server() as clients:
            for client in clients:
                kind = "SHARDNUMSUB" if self.sharded else "NUMSUB"
                reply = await client.execute_command("PUBSUB", kind, name)
                total += int(reply[1]) if isinstance(reply, list) else int(next(iter(dict(reply).values())))
        return total

    async def subscribed_channels(self, pattern: str) -> set[bytes]:
        """The pub/sub channels (shard channels on a cluster) matching ``pattern`` with a subscriber."""
        found: set[bytes] = set()
        async with self._each_server() as clients:
            for client in clients:
                if self.sharded:
                    found.update(await client.execute_command("PUBSUB", "SHARDCHANNELS", pattern))
                else:
                    found.update(await client.pubsub_channels(pattern))
        return found


@pytest.fixture(scope="session", params=["single", pytest.param("cluster")])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each cross-node test runs once on one Redis and once on a 3-primary Redis Cluster."""
    if request.param == "single":
        url: str = request.getfixturevalue("redis_url")
        yield Backend("single", url, (url,))
        return
    cluster: LocalCluster = request.getfixturevalue("redis_cluster")
    yield Backend("cluster", cluster.url, tuple(f"redis://127.0.0.1:{p.port}/0" for p in cluster.primaries))


@pytest.fixture
async def backend_client(backend: Backend) -> AsyncIterator[StoreClient]:
    """A data client of ``backend`` (routes by key on a cluster)."""
    async with backend.client() as client:
        yield client
