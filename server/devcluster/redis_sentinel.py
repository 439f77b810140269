"""A real Sentinel setup on loopback: a primary, one replica and three sentinels, for the tests.

:class:`LocalSentinel` starts a primary, a replica of it (``--replicaof``) and three
sentinels (``<binary> <config> --sentinel``) that monitor the primary under one name with
a quorum of 2. Detection and failover are fast on purpose: the primary is down for the
sentinels after 1 s of silence, and a failover that stalls is retried after 3 s.

Guarantees: :meth:`LocalSentinel.start` returns only once the replica's link to the
primary is up and every sentinel knows the primary, the replica (as a healthy replica)
and both other sentinels, so a failover can happen from then on; otherwise it stops
everything it started and raises :class:`TopologyError`. :meth:`LocalSentinel.stop`
stops every process and removes every file, whatever happened before.
"""

from __future__ import annotations

from types import TracebackType

from tidings.server.devcluster.resp import Reply, command, text
from tidings.server.devcluster.topology import ServerSet, wait_for
from tidings.server.devcluster.valkey import ValkeyServer

__all__ = ["LocalSentinel"]

_SENTINELS = 3
_QUORUM = 2


def _fields(reply: Reply) -> dict[str, str]:
    """A flat ``[name, value, name, value, ...]`` reply (``SENTINEL MASTER``) as a dict."""
    items = [item for item in reply if isinstance(item, str)] if isinstance(reply, list) else []
    return dict(zip(items[::2], items[1::2], strict=False))


class LocalSentinel:
    """A primary, a replica and three sentinels on 127.0.0.1; a context manager.

    Args:
        binary: the server binary (it runs the sentinels too); the embedded Valkey's when None.
        master_name: the name the sentinels monitor the primary under.
        down_after_ms: ``sentinel down-after-milliseconds``.
        failover_timeout_ms: ``sentinel failover-timeout``.
        start_timeout: seconds the whole setup has to settle.
    """

    def __init__(
        self,
        binary: str | None = None,
        master_name: str = "tidings",
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        start_timeout: float = 30.0,
    ) -> None:
        self.binary = binary
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.start_timeout = start_timeout
        self.sentinels: list[ValkeyServer] = []
        self._servers: ServerSet | None = None
        self._primary: ValkeyServer | None = None
        self._replica: ValkeyServer | None = None

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/<master_name>``."""
        seeds = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{seeds}/{self.master_name}"

    @property
    def primary(self) -> ValkeyServer:
        """The current primary: the promoted replica once :meth:`wait_for_failover` returned."""
        if self._primary is None:
            raise RuntimeError("not started")
        return self._primary

    @property
    def replica(self) -> ValkeyServer:
        """The other data server: after a failover, the old primary (dead, if it was killed)."""
        if self._replica is None:
            raise RuntimeError("not started")
        return self._replica

    @property
    def data_dir(self) -> str | None:
        return self._servers.root if self._servers is not None else None

    def start(self) -> LocalSentinel:
        """Start the servers and the sentinels (see the module's guarantees).

        Raises:
            ValkeyUnavailable: no server binary, or a server did not start.
            TopologyError: the setup did not settle within ``start_timeout``.
        """
        if self._servers is not None:
            raise RuntimeError("the sentinel setup is running already")
        servers = self._servers = ServerSet(self.binary, prefix="tidings-sentinel-")
        try:
            # A replica syncs at once, instead of waiting 5 s for others to share the transfer.
            fast_sync = ("--repl-diskless-sync-delay", "0")
            primary = self._primary = servers.start(extra_args=lambda: fast_sync)
            replica_of = ("--replicaof", "127.0.0.1", str(primary.port))
            self._replica = servers.start(extra_args=lambda: (*fast_sync, *replica_of))
            # Sentinels read the primary's replicas from its INFO as they connect: link first.
            wait_for(self._replication_down, timeout=self.start_timeout, what="the replica to sync")
            self.sentinels = [
                servers.start(extra_args=lambda: ("--sentinel",), config_lines=self._sentinel_config())
                for _ in range(_SENTINELS)
            ]
            wait_for(self._sentinels_unready, timeout=self.start_timeout, what="the sentinels to settle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (terminate, wait, kill) and remove every file. Idempotent."""
        servers, self._servers = self._servers, None
        if servers is not None:
            servers.stop()

    def __enter__(self) -> LocalSentinel:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _sentinel_config(self) -> list[str]:
        name, primary = self.master_name, self.primary
        return [
            "sentinel resolve-hostnames no",  # addresses are IPs: no DNS on the failover path
            f"sentinel monitor {name} 127.0.0.1 {primary.port} {_QUORUM}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]

    def _replication_down(self) -> str | None:
        if "master_link_status:up" not in text(command(self.replica.port, "INFO", "replication")):
            return f"replica {self.replica.port}'s link to primary {self.primary.port} is not up yet"
        return None

    def _sentinels_unready(self) -> str | None:
        """None once every sentinel knows the primary, the replica and the other sentinels."""
        for sentinel in self.sentinels:
            master = _fields(command(sentinel.port, "SENTINEL", "MASTER", self.master_name))
            if master.get("port") != str(self.primary.port) or master.get("flags") != "master":
                return f"sentinel {sentinel.port} sees the master as {master}"
            if master.get("num-other-sentinels") != str(_SENTINELS - 1):
                return f"sentinel {sentinel.port} knows {master.get('num-other-sentinels')} other sentinels"
            replicas = command(sentinel.port, "SENTINEL", "REPLICAS", self.master_name)
            seen = [_fields(entry) for entry in replicas] if isinstance(replicas, list) else []
            if [(r.get("port"), r.get("flags")) for r in seen] != [(str(self.replica.port), "slave")]:
                return f"sentinel {sentinel.port} sees the replicas {seen}"
        return None

    def kill_primary(self) -> ValkeyServer:
        """SIGKILL the current primary (a crash) and reap it; returns it, at once."""
        self.primary.kill()
        return self.primary

    def wait_for_failover(self, timeout: float = 20.0) -> ValkeyServer:
        """Wait until every sentinel names the replica as the master and it answers ``ROLE`` master.

        Returns:
            the new primary (now :attr:`primary`; the old one is now :attr:`replica`).

        Raises:
            TopologyError: no failover within ``timeout`` seconds.
        """
        candidate = self.replica

        def check() -> str | None:
            for sentinel in self.sentinels:
                address = command(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                if address != ["127.0.0.1", str(candidate.port)]:
                    return f"sentinel {sentinel.port} names {address} as the master"
            role = command(candidate.port, "ROLE")
            if not isinstance(role, list) or role[0] != "master":
                return f"the replica {candidate.port} answers ROLE {role}"
            return None

        wait_for(check, timeout=timeout, what=f"the sentinels to promote {candidate.port}")
        self._primary, self._replica = candidate, self._primary
        return candidate
