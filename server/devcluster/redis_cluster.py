"""A real Redis Cluster on loopback: for ``tidings up --shards`` and the tests.

:class:`LocalCluster` starts ``shards * (1 + replicas)`` Valkey (or Redis 7) servers in
cluster mode on free 127.0.0.1 ports and forms the cluster itself, over RESP (resp.py), the
way ``redis-cli --cluster create`` would: each primary gets a distinct config epoch and an
even share of the 16384 slots (``CLUSTER ADDSLOTSRANGE``), every node meets the first one,
and each replica replicates its primary. ``cluster-node-timeout`` is short (1 s) so that a
failover takes seconds, not the default 15 s or more.

Guarantees: :meth:`LocalCluster.start` returns only once every node says
``cluster_state:ok``, every node's ``CLUSTER SLOTS`` shows the whole slot map with the
expected primary and replicas for every range, and every replica's link to its primary
is up; otherwise it stops everything it started and raises :class:`TopologyError`.
:meth:`LocalCluster.stop` stops every process and removes every file, whatever happened
before. The cluster's view of who owns what (``primaries``, ``replicas``,
:meth:`LocalCluster.primary_of_slot`) changes only through this class's own methods, each
of which waits until every live node agrees before it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from tidings.server.devcluster.resp import Reply, RespError, command, text
from tidings.server.devcluster.topology import ServerSet, wait_for
from tidings.server.devcluster.valkey import ValkeyServer, free_port

__all__ = ["SLOTS", "ClusterNode", "LocalCluster", "SlotMigration"]

SLOTS = 16384

# A slot range as CLUSTER SLOTS shows it: first slot, last slot, primary port, replica ports.
SlotRange = tuple[int, int, int, tuple[int, ...]]


@dataclass(eq=False)
class ClusterNode:
    """One server of the cluster; compared by identity."""

    server: ValkeyServer
    node_id: str
    bus_port: int

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def url(self) -> str:
        """A plain URL of this one node (for looking at it directly)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.server.alive

    def __repr__(self) -> str:
        return f"ClusterNode(port={self.port}, id={self.node_id[:8]}, alive={self.alive})"


def _cluster_info(node: ClusterNode) -> dict[str, str]:
    lines = text(command(node.port, "CLUSTER", "INFO")).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _int(reply: Reply) -> int:
    if not isinstance(reply, int):
        raise TypeError(f"expected an integer in CLUSTER SLOTS, got {reply!r}")
    return reply


def _cluster_slots(node: ClusterNode) -> list[SlotRange]:
    """The node's ``CLUSTER SLOTS``, as sorted (first, last, primary port, replica ports)."""
    reply = command(node.port, "CLUSTER", "SLOTS")
    ranges: list[SlotRange] = []
    for entry in reply if isinstance(reply, list) else []:
        if not isinstance(entry, list) or len(entry) < 3:
            raise TypeError(f"not a CLUSTER SLOTS entry: {entry!r}")
        # Each member is [ip, port, node id, (Redis 7: metadata)].
        ports = [_int(member[1]) for member in entry[2:] if isinstance(member, list)]
        ranges.append((_int(entry[0]), _int(entry[1]), ports[0], tuple(sorted(ports[1:]))))
    return sorted(ranges)


class LocalCluster:
    """A Redis Cluster of local server processes; a context manager.

    Args:
        shards: the number of primaries (1-16), each with an even share of the slots.
        replicas: replicas per primary (0-4).
        binary: the server binary; the embedded Valkey's (or one on PATH) when None.
        node_timeout_ms: ``cluster-node-timeout``; failure detection and failover scale with it.
        start_timeout: seconds the whole cluster has to form.
    """

    def __init__(
        self,
        shards: int = 3,
        replicas: int = 0,
        binary: str | None = None,
        *,
        node_timeout_ms: int = 1000,
        start_timeout: float = 30.0,
    ) -> None:
        if not 1 <= shards <= 16 or not 0 <= replicas <= 4:
            raise ValueError("shards must be 1-16 and replicas 0-4")
        self.shards = shards
        self.replica_count = replicas
        self.binary = binary
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        self.nodes: list[ClusterNode] = []  # every node ever started, dead ones included
        self._servers: ServerSet | None = None
        self._primaries: list[ClusterNode] = []
        self._replica_of: dict[ClusterNode, ClusterNode] = {}  # live replica -> its primary
        self._owner: list[ClusterNode] = []  # slot -> the primary that owns it

    # -- what tests and `tidings up` read --------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...``: the current primaries, as seeds."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self._primaries)

    @property
    def primaries(self) -> list[ClusterNode]:
        """The live primaries, in the order they were given their first slots."""
        return list(self._primaries)

    @property
    def replicas(self) -> list[ClusterNode]:
        """The live replicas."""
        return list(self._replica_of)

    @property
    def data_dir(self) -> str | None:
        """The directory holding every node's files (None once stopped)."""
        return self._servers.root if self._servers is not None else None

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        return [replica for replica, of in self._replica_of.items() if of is primary]

    def primary_of_slot(self, slot: int) -> ClusterNode:
        """The primary that owns ``slot`` (every live node agrees: the methods below wait for it)."""
        return self._owner[slot]

    def slots_of(self, primary: ClusterNode) -> list[int]:
        return [slot for slot, owner in enumerate(self._owner) if owner is primary]

    # -- start and stop --------------------------------------------------------------------------

    def start(self) -> LocalCluster:
        """Start the servers and form the cluster (see the module's guarantees).

        Raises:
            ValkeyUnavailable: no server binary, or a server did not start.
            TopologyError: the cluster did not form within ``start_timeout``.
        """
        if self._servers is not None:
            raise RuntimeError("the cluster is running already")
        self._servers = ServerSet(self.binary, prefix="tidings-cluster-")
        self.nodes = []
        try:
            for _ in range(self.shards * (1 + self.replica_count)):
                self.nodes.append(self._start_node(self._servers))
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (terminate, wait, kill) and remove their files. Idempotent."""
        servers, self._servers = self._servers, None
        self._primaries, self._replica_of, self._owner = [], {}, []
        if servers is not None:
            servers.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _start_node(self, servers: ServerSet) -> ClusterNode:
        bus_ports: list[int] = []

        def arguments() -> list[str]:
            # An explicit bus port: the default (port + 10000) can be taken, or be past 65535.
            bus_ports.append(free_port())
            return [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",  # in the server's own data directory
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-port", str(bus_ports[-1]),
                # A replica syncs at once, instead of waiting 5 s for others to share the transfer.
                "--repl-diskless-sync-delay", "0",
                # CLUSTER SLOTS lists a replica only once its replication offset is known to be past
                # 0; an idle primary moves it with this ping, every 10 s by default.
                "--repl-ping-replica-period", "1",
            ]  # fmt: skip

        server = servers.start(extra_args=arguments)
        return ClusterNode(server, text(command(server.port, "CLUSTER", "MYID")), bus_ports[-1])

    def _form(self) -> None:
        """Slots, epochs, meet, replicate; then wait until every node agrees."""
        primaries, replicas = self.nodes[: self.shards], self.nodes[self.shards :]
        for index, primary in enumerate(primaries):
            first, last = index * SLOTS // self.shards, (index + 1) * SLOTS // self.shards - 1
            # Distinct epochs up front: no epoch collision for the nodes to resolve among themselves.
            command(primary.port, "CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            command(primary.port, "CLUSTER", "ADDSLOTSRANGE", first, last)
            self._owner += [primary] * (last - first + 1)
        first_node = self.nodes[0]
        for node in self.nodes[1:]:
            command(node.port, "CLUSTER", "MEET", "127.0.0.1", first_node.port, first_node.bus_port)
        wait_for(self._unknown_nodes, timeout=self.start_timeout, what="every node to know every other")
        for index, replica in enumerate(replicas):
            primary = primaries[index % self.shards]
            command(replica.port, "CLUSTER", "REPLICATE", primary.node_id)
            self._replica_of[replica] = primary
        self._primaries = list(primaries)
        wait_for(
            lambda: self._disagreement(with_replicas=True) or self._replication_down(),
            timeout=self.start_timeout,
            what="the cluster to form",
        )

    # -- the checks every wait uses --------------------------------------------------------------

    def _unknown_nodes(self) -> str | None:
        """None once every node lists every node's id, past its handshake."""
        expected = {node.node_id for node in self.nodes}
        for node in self.nodes:
            lines = text(command(node.port, "CLUSTER", "NODES")).splitlines()
            known = {line.split()[0] for line in lines if "handshake" not in line.split()[2]}
            if known != expected:
                return f"node {node.port} knows {len(known)} of {len(expected)} nodes"
        return None

    def _expected_ranges(self, owners: list[ClusterNode], *, with_replicas: bool) -> list[SlotRange]:
        ranges: list[SlotRange] = []
        first = 0
        for slot in range(1, SLOTS + 1):
            if slot == SLOTS or owners[slot] is not owners[first]:
                owner = owners[first]
                replicas = tuple(sorted(r.port for r in self.replicas_of(owner))) if with_replicas else ()
                ranges.append((first, slot - 1, owner.port, replicas))
                first = slot
        return ranges

    def _disagreement(self, *, with_replicas: bool, owners: list[ClusterNode] | None = None) -> str | None:
        """None once every live node says ``cluster_state:ok`` and shows the slot map ``owners``
        (the recorded one when None), with the replicas too if ``with_replicas``."""
        expected = self._expected_ranges(owners or self._owner, with_replicas=with_replicas)
        for node in self.nodes:
            if not node.alive:
                continue
            state = _cluster_info(node).get("cluster_state")
            if state != "ok":
                return f"node {node.port} says cluster_state:{state}"
            seen = _cluster_slots(node)
            if not with_replicas:
                seen = [(first, last, primary, ()) for first, last, primary, _ in seen]
            if seen != expected:
                return f"node {node.port} shows slots {seen}, expected {expected}"
        return None

    def _replication_down(self) -> str | None:
        for replica in self._replica_of:
            info = text(command(replica.port, "INFO", "replication"))
            if "master_link_status:up" not in info:
                return f"replica {replica.port}'s link to its primary is not up yet"
        return None

    # -- faults ----------------------------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL ``node`` (a crash) and reap it; returns at once, before anyone notices."""
        node.server.kill()

    def wait_for_failover(self, dead: ClusterNode, timeout: float = 15.0) -> ClusterNode:
        """Wait until one of dead primary ``dead``'s replicas owns all its slots, as every live node
        sees it, with ``cluster_state:ok`` everywhere and the new primary answering ``ROLE`` master.

        Returns:
            the promoted replica, now among :attr:`primaries` (``dead`` no longer is).

        Raises:
            ValueError: ``dead`` is not a primary with slots and replicas.
            TopologyError: no failover within ``timeout`` seconds.
        """
        candidates = self.replicas_of(dead)
        dead_slots = self.slots_of(dead)
        if dead not in self._primaries or not candidates or not dead_slots:
            raise ValueError(f"{dead} is not a primary with slots and replicas: nothing can fail over")
        promoted: list[ClusterNode] = []

        def check() -> str | None:
            witness = next((node for node in self.nodes if node.alive), None)
            if witness is None:
                return "no node of the cluster is alive"
            owner_port = next(
                (
                    primary
                    for first, last, primary, _ in _cluster_slots(witness)
                    if first <= dead_slots[0] <= last
                ),
                None,
            )
            winner = next((c for c in candidates if c.port == owner_port), None)
            if winner is None:
                return f"slot {dead_slots[0]} is still owned by port {owner_port}"
            role = command(winner.port, "ROLE")
            if not isinstance(role, list) or role[0] != "master":
                return f"the promoted replica {winner.port} answers ROLE {role}"
            promoted[:] = [winner]
            owners = [winner if owner is dead else owner for owner in self._owner]
            return self._disagreement(with_replicas=False, owners=owners)

        wait_for(check, timeout=timeout, what=f"a replica of {dead.port} to take over its slots")
        winner = promoted[0]
        self._owner = [winner if owner is dead else owner for owner in self._owner]
        self._primaries[self._primaries.index(dead)] = winner
        del self._replica_of[winner]
        for replica in candidates:
            if replica is not winner:
                self._replica_of[replica] = winner  # the cluster moves the others to the new primary
        return winner

    # -- slot migration --------------------------------------------------------------------------

    def begin_migration(self, slot: int, target: ClusterNode) -> SlotMigration:
        """Mark ``slot`` MIGRATING on its owner and IMPORTING on ``target``; no key has moved yet.

        Between this and :meth:`SlotMigration.finish`, a key already moved is answered with
        ``-ASK`` by the old owner, one not yet moved is served there.
        """
        source = self.primary_of_slot(slot)
        if target not in self._primaries or target is source:
            raise ValueError(f"{target} is not another live primary than slot {slot}'s owner")
        command(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        command(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        return SlotMigration(self, slot, source, target)

    def migrate_slot(self, slot: int, target: ClusterNode, *, batch: int = 100) -> None:
        """Move ``slot`` with all its keys to primary ``target`` (a no-op if it owns it already);
        returns once every live node shows the new owner, so the old one answers ``-MOVED``."""
        if self.primary_of_slot(slot) is target:
            return
        migration = self.begin_migration(slot, target)
        migration.move_keys(batch=batch)
        migration.finish()

    def _assign(self, slot: int, owner: ClusterNode) -> None:
        """Record the new owner and wait until every live node shows it."""
        self._owner[slot] = owner
        wait_for(
            lambda: self._disagreement(with_replicas=False),
            timeout=self.start_timeout,
            what=f"every node to see slot {slot} on {owner.port}",
        )


class SlotMigration:
    """One slot on its way from ``source`` to ``target`` (see :meth:`LocalCluster.begin_migration`)."""

    def __init__(self, cluster: LocalCluster, slot: int, source: ClusterNode, target: ClusterNode) -> None:
        self.cluster = cluster
        self.slot = slot
        self.source = source
        self.target = target

    def keys_left(self, count: int = 1000) -> list[str]:
        """Up to ``count`` keys of the slot still on the source."""
        reply = command(self.source.port, "CLUSTER", "GETKEYSINSLOT", self.slot, count)
        return [key for key in reply if isinstance(key, str)] if isinstance(reply, list) else []

    def move_keys(self, count: int | None = None, *, batch: int = 100, timeout_ms: int = 5000) -> int:
        """Move up to ``count`` keys (all when None) with ``MIGRATE``, ``batch`` at a time.

        Returns:
            how many keys moved.
        """
        moved = 0
        while count is None or moved < count:
            keys = self.keys_left(batch if count is None else min(batch, count - moved))
            if not keys:
                break
            command(
                self.source.port,
                "MIGRATE", "127.0.0.1", self.target.port, "", 0, timeout_ms, "KEYS", *keys,
                timeout=timeout_ms / 1000 + 2,
            )  # fmt: skip
            moved += len(keys)
        return moved

    def finish(self) -> None:
        """Move the keys left, then give the slot to the target on every primary: the target first,
        then the source, then the others (the order the Redis Cluster specification gives)."""
        self.move_keys()
        others = [p for p in self.cluster.primaries if p is not self.source and p is not self.target]
        for node in (self.target, self.source, *others):
            try:
                command(node.port, "CLUSTER", "SETSLOT", self.slot, "NODE", self.target.node_id)
            except RespError:
                if node is self.target or node is self.source:
                    raise
                # Another primary may have learnt the new owner by gossip already; that is fine.
        self.cluster._assign(self.slot, self.target)
