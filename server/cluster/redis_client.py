"""The node's shared Redis client for its stores (presence, rooms, inboxes, jobs, liveness, leases).

The backplane keeps connections of its own (backplane/connections.py); this one serves the
stores, for each deployment ``TIDINGS_REDIS_URL`` names (redis_target.py):

* one server: a bounded pool that makes callers wait for a free connection (up to a timeout)
  instead of failing, so a thousand sockets closing at once do not open a thousand connections;
* Sentinel: the same pool, whose connections ask the sentinels for the primary when they connect;
* Cluster: redis-py's ``RedisCluster``, which routes each command by its key and follows
  MOVED/ASK. Every store keeps a command's keys in one slot (keys.py); the few cluster-wide keys
  (the node registry, the user set, the job streams under ``{jobs}``) are single keys.
"""

from __future__ import annotations

from typing import TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from tidings.server.cluster.backplane.connections import SentinelPrimary, located_connection_class
from tidings.server.cluster.redis_target import Topology, parse_redis_url

__all__ = ["StoreClient", "close_store_client", "store_client"]

StoreClient: TypeAlias = "aioredis.Redis | RedisCluster"

_MAX_CONNECTIONS = 64
_POOL_WAIT = 5.0  # seconds a caller may wait for a free connection
_SOCKET_TIMEOUT = 2.0


def store_client(url: str) -> StoreClient:
    """A client for ``url``; close it with :func:`close_store_client`."""
    target = parse_redis_url(url)
    if target.topology is Topology.CLUSTER:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.seeds],
            username=target.username,
            password=target.password,
            ssl=target.tls,
            # Per server, and redis-py's cluster client fails (then retries after a sleep) instead of
            # waiting for a free connection; the hot per-connect calls go through the backplane's
            # pipeline, so these serve the rarer store calls of a disconnect storm.
            max_connections=_MAX_CONNECTIONS * 4,
            socket_timeout=_SOCKET_TIMEOUT,
            socket_connect_timeout=_SOCKET_TIMEOUT,
        )
    if target.topology is Topology.SENTINEL:
        assert target.master is not None
        pool = aioredis.BlockingConnectionPool(
            connection_class=located_connection_class(target.tls),
            locate=SentinelPrimary(list(target.seeds), target.master, timeout=_SOCKET_TIMEOUT),
            max_connections=_MAX_CONNECTIONS,
            timeout=_POOL_WAIT,
            username=target.username,
            password=target.password,
            db=target.db,
            socket_timeout=_SOCKET_TIMEOUT,
            socket_connect_timeout=_SOCKET_TIMEOUT,
        )
        return aioredis.Redis(connection_pool=pool)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=_MAX_CONNECTIONS,
        timeout=_POOL_WAIT,
        socket_timeout=_SOCKET_TIMEOUT,
        socket_connect_timeout=_SOCKET_TIMEOUT,
    )
    return aioredis.Redis(connection_pool=pool)


async def close_store_client(client: StoreClient) -> None:
    """Close the client and every connection it opened."""
    if isinstance(client, RedisCluster):
        await client.aclose()
        return
    await client.aclose()
    await client.connection_pool.disconnect()
    locate = client.connection_pool.connection_kwargs.get("locate")
    if isinstance(locate, SentinelPrimary):
        await locate.close()
