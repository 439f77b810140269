"""Nodes on a Redis Cluster and on Sentinel, while the deployment changes under traffic.

* A slot migrates (MOVED/ASK) while a backend publishes to a channel in it.
* A shard primary is SIGKILLed under traffic and its replica takes over.
* A Sentinel primary is SIGKILLed under traffic and the sentinels promote the replica.

In each, a backend publishes over HTTP through every node, retrying what fails with 503 (the
temporary error of the switch). Then every subscriber must hold every publication that was
acknowledged, or have been told that the stream started anew (a new epoch: the new primary
may lack the old one's last writes), and within an epoch offsets are consecutive, each once.
A client resubscribing from a position of the old epoch gets ``recovered: false``. No node exits.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.backplane.slots import slot_of
from tidings.server.devcluster.redis_cluster import LocalCluster

from ..support.cluster import Cluster, start_cluster
from ..support.node import API_KEY
from ..support.redis_topologies import ClusterFactory, SentinelFactory
from ..support.timing import UNIT, wait_until
from .helpers import open_subscriber

pytestmark = [pytest.mark.cluster, pytest.mark.redis]


class Publisher:
    """Publishes 0, 1, 2... through the nodes in turn; a 503 is retried with the same number."""

    def __init__(self, cluster: Cluster, channel: str) -> None:
        self.cluster, self.channel = cluster, channel
        self.acked: dict[int, tuple[str, int]] = {}  # number → (epoch, offset)
        self.refused = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        n = 0
        async with httpx.AsyncClient(
            timeout=5 * UNIT, headers={"authorization": f"Bearer {API_KEY}"}
        ) as http:
            while not self._stop.is_set() and n < 5000:
                node = self.cluster.nodes[n % len(self.cluster.nodes)]
                try:
                    reply = await http.post(
                        f"{node.http_url}/api/publish", json={"channel": self.channel, "data": n}
                    )
                except httpx.HTTPError:
                    reply = None
                if reply is not None and reply.status_code == 200:
                    body = reply.json()
                    self.acked[n] = (body["epoch"], body["offset"])
                    n += 1
                else:
                    assert reply is None or reply.status_code == 503, reply.text
                    self.refused += 1
                    await asyncio.sleep(0.02)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def until(self, count: int, within: float = 30 * UNIT) -> None:
        await wait_until(lambda: len(self.acked) >= count, timeout=within, what=f"{count} acknowledged")


def check_stream(received: list[dict[str, Any]], acked: dict[int, tuple[str, int]]) -> None:
    """Within an epoch: consecutive offsets, each once. Every acknowledged publication is there,
    except ones of an epoch that ended (the subscriber then saw the stream start anew)."""
    epochs: list[str] = []
    last: dict[str, int] = {}
    for publication in received:
        epoch, offset = publication["epoch"], publication["offset"]
        if epoch not in last:
            epochs.append(epoch)
        else:
            assert offset == last[epoch] + 1, f"offset {offset} after {last[epoch]} in epoch {epoch}"
        last[epoch] = offset
    got = {p["data"] for p in received}
    final = epochs[-1]
    missing = [n for n, (epoch, _) in acked.items() if n not in got and (epoch == final or len(epochs) == 1)]
    assert not missing, f"acknowledged but never delivered: {missing[:10]}"


async def run_under_traffic(cluster: Cluster, channel: str, fault: Callable[[], Any]) -> dict[str, Any]:
    """Subscribers on every node, traffic, ``fault()`` (sync or async) mid-stream, more traffic; checks."""
    subscribers = [await open_subscriber(n.ws_url, f"s{i}", [channel]) for i, n in enumerate(cluster.nodes)]
    publisher = Publisher(cluster, channel)
    publisher.start()
    try:
        await publisher.until(40)
        outcome = fault()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        before = len(publisher.acked)
        await publisher.until(before + 60, within=60 * UNIT)
        await publisher.stop()
        last = max(publisher.acked)
        final_epoch = publisher.acked[last][0]
        for subscriber in subscribers:
            await wait_until(
                lambda s=subscriber: any(p["data"] == last for p in s.of(channel)),  # type: ignore[misc]
                timeout=20 * UNIT,
                what="the last publication on every node",
            )
            check_stream(subscriber.of(channel), publisher.acked)
        assert all(node.alive() for node in cluster.nodes), [n.log_tail() for n in cluster.nodes]
        return {"acked": publisher.acked, "refused": publisher.refused, "final_epoch": final_epoch}
    finally:
        if not publisher._stop.is_set():
            await publisher.stop()
        for subscriber in subscribers:
            await subscriber.close()


async def assert_old_epoch_cannot_recover(cluster: Cluster, channel: str, old: tuple[str, int]) -> None:
    client = await open_subscriber(cluster.nodes[0].ws_url, "late", [])
    try:
        reply = await client.result("subscribe", channel=channel, since={"epoch": old[0], "offset": old[1]})
        assert reply["recovered"] is False, reply
    finally:
        await client.close()


def channel_on(cluster: LocalCluster, prefix: str, primary_index: int) -> str:
    """A new channel whose slot the ``primary_index``-th primary serves."""
    target = cluster.primaries[primary_index]
    while True:
        channel = f"room:t{uuid.uuid4().hex[:8]}"
        if cluster.primary_of_slot(slot_of(redis_keys.channel_pubsub(prefix, channel))) is target:
            return channel


async def test_a_slot_migrating_under_traffic_loses_no_acknowledged_publication(
    fresh_cluster: ClusterFactory, key_prefix: str
) -> None:
    with (
        fresh_cluster(replicas=0) as redis,
        start_cluster(3, redis_url=redis.url, key_prefix=key_prefix) as cluster,
    ):
        channel = channel_on(redis, key_prefix, 0)
        slot = slot_of(redis_keys.channel_pubsub(key_prefix, channel))
        result = await run_under_traffic(
            cluster, channel, lambda: asyncio.to_thread(redis.migrate_slot, slot, redis.primaries[1])
        )
        assert redis.primary_of_slot(slot) is redis.primaries[1]
        first = result["acked"][0]
        if first[0] != result["final_epoch"]:  # the stream was started anew on its new shard
            await assert_old_epoch_cannot_recover(cluster, channel, first)


async def test_a_shard_primary_killed_under_traffic_fails_over_and_every_client_is_whole_or_told(
    fresh_cluster: ClusterFactory, key_prefix: str
) -> None:
    with (
        fresh_cluster(replicas=1) as redis,
        start_cluster(3, redis_url=redis.url, key_prefix=key_prefix) as cluster,
    ):
        channel = channel_on(redis, key_prefix, 0)
        doomed = redis.primaries[0]

        async def kill_and_fail_over() -> None:
            redis.kill(doomed)
            await asyncio.to_thread(redis.wait_for_failover, doomed, 30 * UNIT)

        result = await run_under_traffic(cluster, channel, kill_and_fail_over)
        first = result["acked"][0]
        assert first[0] != result["final_epoch"]  # the promoted replica started a new epoch
        await assert_old_epoch_cannot_recover(cluster, channel, first)


async def test_a_sentinel_failover_under_traffic_keeps_every_client_whole_or_told(
    fresh_sentinel: SentinelFactory, key_prefix: str
) -> None:
    with fresh_sentinel() as redis, start_cluster(3, redis_url=redis.url, key_prefix=key_prefix) as cluster:
        channel = f"room:s{uuid.uuid4().hex[:8]}"

        async def kill_and_fail_over() -> None:
            redis.kill_primary()
            await asyncio.to_thread(redis.wait_for_failover, 30 * UNIT)

        result = await run_under_traffic(cluster, channel, kill_and_fail_over)
        first = result["acked"][0]
        assert first[0] != result["final_epoch"]
        await assert_old_epoch_cannot_recover(cluster, channel, first)


async def test_a_token_works_on_every_node_of_a_sentinel_deployment(
    fresh_sentinel: SentinelFactory, key_prefix: str
) -> None:
    """Presence and history go through the Sentinel pool: join on one node, seen from another."""
    with fresh_sentinel() as redis, start_cluster(2, redis_url=redis.url, key_prefix=key_prefix) as cluster:
        room = f"room:p{uuid.uuid4().hex[:8]}"
        alice = await open_subscriber(cluster.nodes[0].ws_url, "alice", [room])
        try:
            async with httpx.AsyncClient(
                base_url=cluster.nodes[1].http_url, headers={"authorization": f"Bearer {API_KEY}"}
            ) as http:

                async def present() -> bool:
                    body = (await http.get(f"/api/channels/{room}/presence")).json()
                    return [m["user"] for m in body["members"]] == ["alice"]

                await wait_until(present, what="alice in presence, seen from node-2")
        finally:
            await alice.close()
