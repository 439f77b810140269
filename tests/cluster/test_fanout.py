"""Cross-node fan-out on 3 real node processes and one Redis (DESIGN.md, Guarantees 1-2)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from loadtest.protocol_client import ProtocolClient
from tidings.client import Connection
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.gateway.auth import issue_token

from ..support.backends import Backend
from ..support.cluster import Cluster
from ..support.node import SECRET
from ..support.timing import UNIT, wait_until
from .helpers import open_subscriber, publish_http

pytestmark = [pytest.mark.cluster, pytest.mark.redis]


def new_channel(name: str) -> str:
    return f"room:{name}-{uuid.uuid4().hex[:8]}"


async def test_every_subscriber_on_every_node_gets_every_publication_once_in_order(cluster: Cluster) -> None:
    """Publishers: a WebSocket client on each node and POST /api/publish on each node, all at once."""
    channel = new_channel("fan")
    subscribers = [
        await open_subscriber(node.ws_url, f"u{i}-{j}", [channel])
        for i, node in enumerate(cluster.nodes)
        for j in range(2)
    ]
    assert {s.info["node"] for s in subscribers} == {"node-1", "node-2", "node-3"}
    per_publisher = 15
    try:
        async with httpx.AsyncClient(timeout=5 * UNIT) as http:

            async def over_websocket(subscriber: ProtocolClient) -> None:
                for n in range(per_publisher):  # the publisher is itself subscribed: it gets its own too
                    await subscriber.result(
                        "publish", channel=channel, data={"ws": subscriber.info["user"], "n": n}
                    )

            async def over_http(base_url: str) -> None:
                for n in range(per_publisher):
                    await publish_http(http, base_url, channel, {"http": base_url, "n": n})

            await asyncio.gather(
                *(over_websocket(s) for s in subscribers[::2]),
                *(over_http(node.http_url) for node in cluster.nodes),
            )
        total = 6 * per_publisher
        sent = {(s.info["user"], n) for s in subscribers[::2] for n in range(per_publisher)}
        sent |= {(node.http_url, n) for node in cluster.nodes for n in range(per_publisher)}
        for subscriber in subscribers:
            publications = await subscriber.wait_for(channel, total)
            assert [p["offset"] for p in publications] == list(range(1, total + 1)), subscriber.info["node"]
            assert len({p["epoch"] for p in publications}) == 1
            assert {(p["data"].get("ws") or p["data"]["http"], p["data"]["n"]) for p in publications} == sent
        # Nothing more arrives afterwards (no late duplicate): a marker is the next thing everybody sees.
        await subscribers[0].result("publish", channel=channel, data="marker")
        for subscriber in subscribers:
            publications = await subscriber.wait_for(channel, total + 1)
            assert len(publications) == total + 1 and publications[-1]["data"] == "marker"
    finally:
        for subscriber in subscribers:
            await subscriber.close()


async def test_a_node_without_subscribers_is_not_subscribed_in_redis(
    cluster: Cluster, backend: Backend
) -> None:
    channel = new_channel("numsub")
    prefix = cluster.key_prefix

    async def subscribed_nodes(expected: int) -> None:
        async def check() -> bool:
            return await backend.numsub(redis_keys.channel_pubsub(prefix, channel)) == expected

        await wait_until(check, what=f"PUBSUB NUMSUB {channel} == {expected}")

    first = await open_subscriber(cluster.nodes[0].ws_url, "a", [channel])
    second = await open_subscriber(cluster.nodes[0].ws_url, "b", [channel])
    third = await open_subscriber(cluster.nodes[1].ws_url, "c", [channel])
    try:
        await subscribed_nodes(2)  # node-1 once for two subscribers, node-2 once, node-3 not at all
        pubsub_channels = await backend.subscribed_channels(f"{prefix}:*")
        assert redis_keys.channel_pubsub(prefix, channel).encode() in pubsub_channels
        await first.result("unsubscribe", channel=channel)
        await subscribed_nodes(2)  # node-1 still has a subscriber
        await second.close()
        await subscribed_nodes(1)
        await third.result("unsubscribe", channel=channel)
        await subscribed_nodes(0)
        assert redis_keys.channel_pubsub(prefix, channel).encode() not in await backend.subscribed_channels(
            f"{prefix}:*"
        )
    finally:
        for subscriber in (first, second, third):
            await subscriber.close()


async def test_dropping_every_nodes_pubsub_link_mid_stream_loses_nothing(
    cluster: Cluster, backend: Backend
) -> None:
    """CLIENT KILL of each node's pub/sub connection while a backend publishes: nodes repair from history."""
    channel = new_channel("drop")
    subscribers = [
        await open_subscriber(node.ws_url, f"d{i}", [channel]) for i, node in enumerate(cluster.nodes)
    ]
    links = f"{cluster.key_prefix}:node:"
    published = 0
    stop = asyncio.Event()
    try:
        async with httpx.AsyncClient(timeout=5 * UNIT) as http:

            async def publish_until_stopped() -> None:
                nonlocal published
                while not stop.is_set() and published < 10_000:
                    node = cluster.nodes[published % 3]
                    await publish_http(http, node.http_url, channel, published)
                    published += 1

            publishing = asyncio.create_task(publish_until_stopped())
            try:
                for round_ in range(1, 3):
                    await wait_until(lambda r=round_: published >= 30 * r)  # type: ignore[misc]
                    entries = await backend.pubsub_clients()
                    before = {e["key"] for e in entries}
                    ours = [e for e in entries if e.get("name", "").startswith(links)]
                    assert len(ours) == 3 * len(backend.servers)  # a link per node (per shard on a cluster)
                    await backend.kill_pubsub_links()

                    async def relinked(before: set[str] = before, count: int = len(ours)) -> bool:
                        entries = await backend.pubsub_clients()
                        fresh = [
                            e
                            for e in entries
                            if e.get("name", "").startswith(links) and e["key"] not in before
                        ]
                        return len(fresh) == count

                    await wait_until(relinked, what="every node to reconnect its pub/sub link")
                await wait_until(lambda: published >= 100)
            finally:
                stop.set()
                await publishing
        for subscriber in subscribers:
            publications = await subscriber.wait_for(channel, published)
            assert [p["offset"] for p in publications] == list(range(1, published + 1)), subscriber.info[
                "node"
            ]
            assert [p["data"] for p in publications] == list(range(published))
    finally:
        for subscriber in subscribers:
            await subscriber.close()


async def test_the_sdk_sees_the_same_stream_on_every_node(cluster: Cluster) -> None:
    """The Python client over a list of node URLs: connect reply names the node, every client the same order."""
    channel = new_channel("sdk")
    connections = [
        Connection(node.ws_url, issue_token(f"s{i}", SECRET)) for i, node in enumerate(cluster.nodes)
    ]
    try:
        for connection in connections:
            await connection.connect(subscribe=[channel])
        assert [c.node for c in connections] == ["node-1", "node-2", "node-3"]
        await asyncio.gather(
            *(c.publish(channel, {"by": c.node, "n": n}) for c in connections for n in range(5))
        )
        streams = []
        for connection in connections:
            streams.append([await connection.publications(channel, timeout=5 * UNIT) for _ in range(15)])
        assert all([p["offset"] for p in stream] == list(range(1, 16)) for stream in streams)
        assert streams[0] == streams[1] == streams[2]
    finally:
        for connection in connections:
            await connection.close()
