"""Which Redis deployment ``TIDINGS_REDIS_URL`` names: one server, a Cluster, or a Sentinel-managed primary.

Pure parsing, no I/O. Three forms:

* ``redis://[user:password@]host:port[/db]`` (also ``rediss://`` and ``unix://``): one server.
* ``redis+cluster://[user:password@]host:port[,host:port...]``: Redis or Valkey Cluster; the
  addresses are seeds, the slot map is read from them.
* ``redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>[?db=N]``: the
  sentinels, and the name of the primary they watch. The password is the primary's (the
  sentinels are asked without one).

``rediss+cluster://`` and ``rediss+sentinel://`` ask for TLS to the data servers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

__all__ = ["Address", "RedisTarget", "Topology", "parse_redis_url"]

Address = tuple[str, int]


class Topology(enum.Enum):
    SINGLE = "single"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``TIDINGS_REDIS_URL``.

    ``url`` is the URL as given (redis-py reads it as it is for a single server); ``seeds`` are the
    cluster nodes or the sentinels; ``master`` is the Sentinel primary's name.
    """

    topology: Topology
    url: str
    seeds: tuple[Address, ...] = ()
    master: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False

    @property
    def sharded(self) -> bool:
        """Whether live traffic uses sharded pub/sub (SSUBSCRIBE/SPUBLISH), one link per shard."""
        return self.topology is Topology.CLUSTER


_SCHEMES = {
    "redis": (Topology.SINGLE, False),
    "rediss": (Topology.SINGLE, True),
    "unix": (Topology.SINGLE, False),
    "redis+cluster": (Topology.CLUSTER, False),
    "rediss+cluster": (Topology.CLUSTER, True),
    "redis+sentinel": (Topology.SENTINEL, False),
    "rediss+sentinel": (Topology.SENTINEL, True),
}


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``url`` (see the module docstring).

    Raises:
        ValueError: an unknown scheme, no address, a port that is not a number, a Sentinel URL
            without a master name, or a Cluster URL with a database other than 0.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ValueError(f"expected a URL starting with one of {known}; got {url!r}")
    topology, tls = _SCHEMES[scheme.lower()]
    if topology is Topology.SINGLE:
        return RedisTarget(topology, url, tls=tls)
    rest, _, query = rest.partition("?")
    hosts, _, path = rest.partition("/")
    username, password, hosts = _credentials(hosts)
    seeds = tuple(_address(part) for part in hosts.split(",") if part.strip())
    if not seeds:
        raise ValueError(f"{scheme}:// needs at least one host:port; got {url!r}")
    db = _db(query)
    if topology is Topology.CLUSTER:
        if path.strip("/") or db:
            raise ValueError(f"a Redis Cluster has only database 0; drop the path or ?db= from {url!r}")
        return RedisTarget(topology, url, seeds, None, username, password, 0, tls)
    master = unquote(path.strip("/"))
    if not master:
        raise ValueError(
            f"{scheme}:// needs the primary's name after the sentinels: .../<master>; got {url!r}"
        )
    return RedisTarget(topology, url, seeds, master, username, password, db, tls)


def _credentials(hosts: str) -> tuple[str | None, str | None, str]:
    userinfo, at, addresses = hosts.rpartition("@")
    if not at:
        return None, None, hosts
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None, addresses)


def _address(part: str) -> Address:
    host, colon, port = part.strip().rpartition(":")
    if not colon or not host:
        raise ValueError(f"expected host:port, got {part.strip()!r}")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"the port of {part.strip()!r} is not a number") from None
    if not 0 < number < 65536:
        raise ValueError(f"the port of {part.strip()!r} is out of range")
    return host.strip("[]"), number


def _db(query: str) -> int:
    values = parse_qs(query).get("db")
    if not values:
        return 0
    try:
        return int(values[0])
    except ValueError:
        raise ValueError(f"db must be a number, got {values[0]!r}") from None
