"""Making the backplane's own connections, for each kind of deployment (redis_target.py).

* One server: connections from the URL, as redis-py reads it (``redis://``, ``rediss://``, ``unix://``).
* Cluster: a connection to a given shard primary's address (the slot map says which).
* Sentinel: a connection that asks the sentinels for the current primary each time it connects,
  so a link or pipeline that lost its server after a failover finds the new one by reconnecting.

Every connection is named with ``CLIENT SETNAME`` (keys.client_name), so ``CLIENT LIST`` tells
which node and role it serves.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool, SSLConnection
from redis.asyncio.sentinel import Sentinel

from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.redis_target import Address, RedisTarget, Topology

__all__ = ["ConnectionFactory", "SentinelPrimary", "located_connection_class"]


class SentinelPrimary:
    """Asks the sentinels for the address of the primary they watch (redis-py's discovery)."""

    def __init__(self, sentinels: list[Address], master: str, *, timeout: float) -> None:
        self.master = master
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            sentinels, sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout}
        )

    async def __call__(self) -> Address:
        """The primary's address now. Raises MasterNotFoundError (a redis ConnectionError) if none."""
        host, port = await self._sentinel.discover_master(self.master)
        return str(host), int(port)

    async def close(self) -> None:
        for sentinel in self._sentinel.sentinels:
            await sentinel.aclose()


class _Located:
    """Mixin: connect to the address ``locate()`` gives at that moment (the Sentinel primary)."""

    host: str
    port: int

    def __init__(self, *args: Any, locate: SentinelPrimary, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._locate = locate

    async def _connect(self) -> None:
        self.host, self.port = await self._locate()
        await super()._connect()  # type: ignore[misc]


class _LocatedConnection(_Located, Connection):
    pass


class _LocatedSSLConnection(_Located, SSLConnection):
    pass


def located_connection_class(tls: bool) -> type[AbstractConnection]:
    """A connection class that takes ``locate=SentinelPrimary`` and connects wherever it points."""
    return _LocatedSSLConnection if tls else _LocatedConnection


class ConnectionFactory:
    """New, unconnected connections to the deployment ``target`` names.

    Args:
        target: the parsed ``TIDINGS_REDIS_URL``.
        key_prefix, node_id: name the connections.
        socket_timeout, connect_timeout: seconds, for every connection made here.
    """

    def __init__(
        self,
        target: RedisTarget,
        *,
        key_prefix: str,
        node_id: str,
        socket_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.target = target
        self._prefix = key_prefix
        self._node_id = node_id
        self._sentinel: SentinelPrimary | None = None
        self._pool: ConnectionPool | None = None
        if target.topology is Topology.SINGLE:
            self._pool = ConnectionPool.from_url(
                target.url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
            )
            self._kwargs: dict[str, Any] = dict(self._pool.connection_kwargs)
            self._class: type[AbstractConnection] = self._pool.connection_class
            return
        self._kwargs = {
            "username": target.username,
            "password": target.password,
            "db": target.db,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
        }
        if target.topology is Topology.SENTINEL:
            assert target.master is not None
            self._sentinel = SentinelPrimary(list(target.seeds), target.master, timeout=connect_timeout)
            self._class = located_connection_class(target.tls)
            self._kwargs["locate"] = self._sentinel
        else:
            self._class = SSLConnection if target.tls else Connection

    def new(self, role: str, *, address: Address | None = None, timed: bool = True) -> AbstractConnection:
        """A connection for ``role`` (pubsub, commands, ...); ``address``: the shard primary (cluster).

        ``timed=False``: no per-call socket timeout (the caller bounds its waits as a whole).
        """
        kwargs = dict(self._kwargs)
        kwargs["client_name"] = redis_keys.client_name(self._prefix, self._node_id, role)
        if not timed:
            kwargs["socket_timeout"] = None
        if address is not None:
            kwargs["host"], kwargs["port"] = address
        return self._class(**kwargs)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.disconnect()
        if self._sentinel is not None:
            await self._sentinel.close()
