"""A node dies; its clients reconnect to another node and recover what they missed (DESIGN.md, Guarantee 2)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tidings.client import Connection
from tidings.server.gateway.auth import issue_token

from ..support.backends import Backend
from ..support.cluster import Cluster, start_cluster
from ..support.node import SECRET
from ..support.timing import UNIT
from .helpers import publish_http

pytestmark = [pytest.mark.cluster, pytest.mark.redis]


@pytest.fixture
def own_cluster(backend: Backend, key_prefix: str) -> Iterator[Cluster]:
    """A cluster of its own: the test kills one of its nodes."""
    with start_cluster(3, redis_url=backend.url, key_prefix=key_prefix) as running:
        yield running


async def test_a_client_of_a_killed_node_recovers_every_publication_on_another_node(
    own_cluster: Cluster,
) -> None:
    channel = f"room:failover-{uuid.uuid4().hex[:8]}"
    doomed, survivor = own_cluster.nodes[0], own_cluster.nodes[1]
    client = Connection(own_cluster.ws_urls, issue_token("alice", SECRET), min_backoff=0.05, max_backoff=0.5)
    received: list[dict[str, object]] = []
    try:
        await client.connect(subscribe=[channel])
        assert client.node == "node-1"
        async with httpx.AsyncClient(timeout=5 * UNIT) as http:
            for n in range(20):
                await publish_http(http, survivor.http_url, channel, n)
            for _ in range(20):
                received.append(await client.publications(channel, timeout=5 * UNIT))

            # The node hangs, then dies: what is published meanwhile never reaches the client live.
            doomed.freeze()
            for n in range(20, 50):
                await publish_http(http, survivor.http_url, channel, n)
            doomed.kill()

            while True:  # recovered publications come first, then the "reconnected" event
                push = await client.recv(timeout=10 * UNIT)
                if push.get("push") == "publication":
                    received.append(push)
                elif push.get("push") in ("reconnected", "closed"):
                    break
            reconnected = push
            assert reconnected["push"] == "reconnected" and client.node in ("node-2", "node-3")
            state = client.info["channels"][channel]
            assert state["recovered"] is True and len(state["publications"]) == 30

            for n in range(50, 60):  # and live again afterwards
                await publish_http(http, survivor.http_url, channel, n)
            while len(received) < 60:
                received.append(await client.publications(channel, timeout=5 * UNIT))
    finally:
        await client.close()
    assert [p["offset"] for p in received] == list(range(1, 61))
    assert [p["data"] for p in received] == list(range(60))
    assert client.reconnects == 1
