"""Making the backplane's own connections, for each kind of deployment (redis_target.py).

* One server: the URL's server, as redis-py reads it (``redis://``, ``rediss://``, ``unix://``).
* Cluster: a connection to a given shard primary's address (the slot map says which).
* Sentinel: a connection that asks the sentinels for the current primary each time it connects,
  so a link or pipeline that lost its server after a failover finds the new one by reconnecting.

Every connection is named with ``CLIENT SETNAME`` (keys.client_name), so ``CLIENT LIST`` tells
which node and role it serves.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool, SSLConnection
from redis.asyncio.sentinel import Sentinel

from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.backplane.resp import Endpoint, RespConnection, open_resp
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
    """Opens the backplane's connections (resp.py) to the deployment ``target`` names.

    Args:
        target: the parsed ``TIDINGS_REDIS_URL``.
        key_prefix, node_id: name the connections.
        connect_timeout: seconds a connection (and its setup) may take.
    """

    def __init__(self, target: RedisTarget, *, key_prefix: str, node_id: str, connect_timeout: float) -> None:
        self.target = target
        self._prefix = key_prefix
        self._node_id = node_id
        self._timeout = connect_timeout
        self._sentinel: SentinelPrimary | None = None
        tls = ssl.create_default_context() if target.tls else None
        if target.topology is Topology.SINGLE:
            self._base = _endpoint_of_url(target.url)
        elif target.topology is Topology.SENTINEL:
            assert target.master is not None
            self._sentinel = SentinelPrimary(list(target.seeds), target.master, timeout=connect_timeout)
            self._base = Endpoint(
                None, None, self._sentinel, target.username, target.password, target.db, tls
            )
        else:
            self._base = Endpoint(None, None, None, target.username, target.password, 0, tls)

    def connector(
        self, role: str, *, address: Address | None = None
    ) -> Callable[[Callable[[Any], None] | None], Awaitable[RespConnection]]:
        """``open(on_push)`` for ``role`` (pubsub, commands, ...); ``address``: the shard primary (cluster)."""
        endpoint = dataclasses.replace(
            self._base,
            name=redis_keys.client_name(self._prefix, self._node_id, role),
            address=address if address is not None else self._base.address,
        )

        def open_(on_push: Callable[[Any], None] | None = None) -> Awaitable[RespConnection]:
            return open_resp(endpoint, timeout=self._timeout, on_push=on_push)

        return open_

    async def close(self) -> None:
        if self._sentinel is not None:
            await self._sentinel.close()


def _endpoint_of_url(url: str) -> Endpoint:
    """A one-server URL as redis-py reads it (``redis://``, ``rediss://``, ``unix://``)."""
    kwargs = ConnectionPool.from_url(url).connection_kwargs
    tls = None
    if url.lower().startswith("rediss://"):
        tls = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
        if kwargs.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    path = kwargs.get("path")
    address = None if path else (str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)))
    return Endpoint(
        address, path, None, kwargs.get("username"), kwargs.get("password"), int(kwargs.get("db") or 0), tls
    )
