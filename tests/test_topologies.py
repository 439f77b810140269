"""The local topologies are what they claim: a real Redis Cluster and a real Sentinel setup.

Checked from outside, with redis-py's own cluster and sentinel clients where a client's view
matters: the slot split, keys and sharded pub/sub across primaries, slot migration (ASK while
it runs, MOVED after), a primary's failover to its replica, a sentinel failover, and that a
topology that fails to start leaves no process or file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from redis.client import PubSub
from redis.cluster import ClusterNode as ClientNode
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.sentinel import Sentinel

from tidings.server.devcluster.redis_cluster import SLOTS, LocalCluster
from tidings.server.devcluster.resp import RespError, command
from tidings.server.devcluster.topology import TopologyError

from .support.redis_topologies import ClusterFactory, SentinelFactory
from .support.timing import UNIT

pytestmark = pytest.mark.redis


@contextlib.contextmanager
def cluster_client(cluster: LocalCluster) -> Iterator[RedisCluster]:
    """redis-py's cluster client, seeded with the cluster's primaries (what its URL names)."""
    seeds = [ClientNode("127.0.0.1", node.port) for node in cluster.primaries]
    client = RedisCluster(startup_nodes=seeds, decode_responses=True, socket_timeout=5 * UNIT)
    try:
        yield client
    finally:
        client.close()


def slot(key: str) -> int:
    return key_slot(key.encode())


def cluster_info(port: int) -> dict[str, str]:
    reply = command(port, "CLUSTER", "INFO")
    assert isinstance(reply, str)
    return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)


def next_sharded_message(pubsub: PubSub, timeout: float = 5 * UNIT) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "smessage":
            return message
    raise AssertionError(f"no sharded message within {timeout:g} s")


def children_of_this_process() -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        found.update(int(pid) for pid in (task / "children").read_text().split())
    return found


def test_the_cluster_forms_with_an_even_slot_split(redis_cluster: LocalCluster) -> None:
    primaries = redis_cluster.primaries
    ports = [node.port for node in primaries]
    assert redis_cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)
    assert redis_cluster.replicas == [] and len(set(ports)) == 3
    for node in primaries:
        info = cluster_info(node.port)
        assert (info["cluster_state"], info["cluster_slots_assigned"], info["cluster_size"]) == (
            "ok",
            "16384",
            "3",
        )
        ranges = command(node.port, "CLUSTER", "SLOTS")
        assert isinstance(ranges, list)
        owned = {}
        for entry in ranges:
            assert isinstance(entry, list) and isinstance(entry[2], list)
            owned[entry[2][1]] = (entry[0], entry[1])
        # Every node shows the same split: primary i owns the i-th third, the last one the remainder.
        assert owned == {ports[0]: (0, 5460), ports[1]: (5461, 10921), ports[2]: (10922, SLOTS - 1)}
    assert [redis_cluster.primary_of_slot(s) for s in (0, 5461, SLOTS - 1)] == primaries


def test_keys_written_through_a_cluster_client_read_back_and_live_on_their_slots_primary(
    redis_cluster: LocalCluster, key_prefix: str
) -> None:
    keys = [f"{key_prefix}:key{i}" for i in range(60)]
    with cluster_client(redis_cluster) as client:
        for key in keys:
            client.set(key, key.upper())
        assert [client.get(key) for key in keys] == [key.upper() for key in keys]
    owners = {redis_cluster.primary_of_slot(slot(key)) for key in keys}
    assert owners == set(redis_cluster.primaries)  # 60 keys land on all three
    for key in keys:
        assert command(redis_cluster.primary_of_slot(slot(key)).port, "GET", key) == key.upper()


def test_sharded_pubsub_reaches_subscribers_on_every_primary(
    redis_cluster: LocalCluster, key_prefix: str
) -> None:
    channels: dict[int, str] = {}  # primary port -> a channel whose slot it owns
    for i in range(100):
        channel = f"{key_prefix}:ch{i}"
        channels.setdefault(redis_cluster.primary_of_slot(slot(channel)).port, channel)
    assert len(channels) == 3
    with contextlib.ExitStack() as stack:
        subscriptions = {}
        for port, channel in channels.items():
            plain = stack.enter_context(redis.Redis(port=port, decode_responses=True))
            pubsub = stack.enter_context(plain.pubsub())
            pubsub.ssubscribe(channel)
            subscriptions[channel] = pubsub
        with cluster_client(redis_cluster) as client:
            for channel, pubsub in subscriptions.items():
                assert pubsub.get_message(timeout=5 * UNIT)["type"] == "ssubscribe"  # type: ignore[index]
                assert client.spublish(channel, f"hello {channel}") == 1
                message = next_sharded_message(pubsub)
                assert (message["channel"], message["data"]) == (channel, f"hello {channel}")
    port, channel = next(iter(channels.items()))
    other = next(node for node in redis_cluster.primaries if node.port != port)
    with pytest.raises(RespError, match=f"^MOVED {slot(channel)} 127.0.0.1:{port}$"):
        command(other.port, "SPUBLISH", channel, "to the wrong shard")


def test_migrate_slot_moves_the_slot_with_its_keys(fresh_cluster: ClusterFactory) -> None:
    with fresh_cluster(replicas=0) as cluster:
        keys = [f"{{moving}}:{i}" for i in range(150)]  # one slot, more keys than one MIGRATE batch
        moving = slot(keys[0])
        source = cluster.primary_of_slot(moving)
        target = next(node for node in cluster.primaries if node is not source)
        with cluster_client(cluster) as client:  # it learns the slot map before the move
            for key in keys:
                client.set(key, key)
            cluster.migrate_slot(moving, target)
            assert cluster.primary_of_slot(moving) is target
            assert command(target.port, "CLUSTER", "COUNTKEYSINSLOT", moving) == 150
            assert command(source.port, "CLUSTER", "COUNTKEYSINSLOT", moving) == 0
            for node in cluster.nodes:  # every other node, the old owner first, knows the new owner
                if node is not target:
                    with pytest.raises(RespError, match=f"^MOVED {moving} 127.0.0.1:{target.port}$"):
                        command(node.port, "GET", keys[0])
            assert [client.get(key) for key in keys] == keys  # the client follows MOVED
        cluster.migrate_slot(moving, target)  # already there: nothing to do


def test_a_slot_in_the_middle_of_a_migration_answers_ask_for_the_keys_already_moved(
    fresh_cluster: ClusterFactory,
) -> None:
    with fresh_cluster(replicas=0) as cluster:
        keys = [f"{{asking}}:{i}" for i in range(10)]
        asking = slot(keys[0])
        source = cluster.primary_of_slot(asking)
        target = next(node for node in cluster.primaries if node is not source)
        for key in keys:
            command(source.port, "SET", key, key)
        migration = cluster.begin_migration(asking, target)
        assert migration.move_keys(4) == 4
        left = migration.keys_left()
        moved = sorted(set(keys) - set(left))
        assert len(moved) == 4 and len(left) == 6
        with pytest.raises(RespError, match=f"^ASK {asking} 127.0.0.1:{target.port}$"):
            command(source.port, "GET", moved[0])
        assert command(source.port, "GET", left[0]) == left[0]  # not moved yet: served where it is
        with pytest.raises(RespError, match=f"^MOVED {asking} 127.0.0.1:{source.port}$"):
            command(target.port, "GET", moved[0])  # the target is not the owner yet...
        with redis.Redis(port=target.port, single_connection_client=True, decode_responses=True) as direct:
            direct.execute_command("ASKING")  # ...but serves one command after ASKING
            assert direct.get(moved[0]) == moved[0]
        assert cluster.primary_of_slot(asking) is source
        migration.finish()
        assert cluster.primary_of_slot(asking) is target
        with pytest.raises(RespError, match=f"^MOVED {asking} 127.0.0.1:{target.port}$"):
            command(source.port, "GET", left[0])
        assert [command(target.port, "GET", key) for key in keys] == keys


def test_a_killed_primary_is_replaced_by_its_replica_with_the_keys_it_had(
    fresh_cluster: ClusterFactory, key_prefix: str
) -> None:
    with fresh_cluster(replicas=1) as cluster:
        victim = cluster.primaries[0]
        (replica,) = cluster.replicas_of(victim)
        candidates = (f"{key_prefix}:{i}" for i in range(1000))
        keys = [key for key in candidates if cluster.primary_of_slot(slot(key)) is victim][:20]
        for key in keys:
            command(victim.port, "SET", key, key)
        assert command(victim.port, "WAIT", 1, int(5000 * UNIT)) == 1  # the replica has them all
        cluster.kill(victim)
        assert not victim.alive
        promoted = cluster.wait_for_failover(victim, timeout=20 * UNIT)
        assert promoted is replica
        assert victim not in cluster.primaries and promoted in cluster.primaries
        assert cluster.primary_of_slot(slot(keys[0])) is promoted and cluster.replicas_of(promoted) == []
        assert len(cluster.replicas) == 2
        assert cluster_info(promoted.port)["cluster_state"] == "ok"
        with cluster_client(cluster) as client:
            assert [client.get(key) for key in keys] == keys
        pids = [node.pid for node in cluster.nodes if node.alive]
        data_dir = cluster.data_dir
    assert len(pids) == 5 and data_dir is not None
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids) and not Path(data_dir).exists()


def test_sentinels_promote_the_replica_when_the_primary_dies(fresh_sentinel: SentinelFactory) -> None:
    with fresh_sentinel() as setup:
        old_primary, replica = setup.primary, setup.replica
        command(old_primary.port, "SET", "greeting", "hello")
        assert command(old_primary.port, "WAIT", 1, int(5000 * UNIT)) == 1
        url = urlsplit(setup.url)
        assert (url.scheme, url.path) == ("redis+sentinel", "/tidings")
        seeds = [(host, int(port)) for host, port in (seed.split(":") for seed in url.netloc.split(","))]
        assert seeds == [("127.0.0.1", sentinel.port) for sentinel in setup.sentinels] and len(seeds) == 3

        assert setup.kill_primary() is old_primary and not old_primary.alive
        assert setup.wait_for_failover(timeout=20 * UNIT) is replica
        assert (setup.primary, setup.replica) == (replica, old_primary)
        sentinels = Sentinel(seeds, socket_timeout=5 * UNIT)
        assert sentinels.discover_master("tidings") == ("127.0.0.1", replica.port)
        with sentinels.master_for("tidings", decode_responses=True, socket_timeout=5 * UNIT) as primary:
            assert primary.get("greeting") == "hello"
            primary.set("after", "failover")  # writable: a primary, not a read-only replica
        for sentinel in sentinels.sentinels:
            sentinel.close()
        pids = [server.pid for server in (replica, *setup.sentinels)]
        data_dir = setup.data_dir
    assert data_dir is not None and not Path(data_dir).exists()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_a_cluster_that_does_not_form_in_time_leaves_no_process_and_no_file(
    topology_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its directory goes where only this test looks
    children = children_of_this_process()
    with pytest.raises(TopologyError, match="timed out after 0 s"):
        LocalCluster(binary=topology_binary, start_timeout=0).start()
    assert children_of_this_process() == children
    assert list(tmp_path.iterdir()) == []
