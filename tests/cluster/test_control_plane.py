"""Who may read a private room, decided on every node at once, even while pub/sub links drop (issue 13, items 2-3)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from loadtest.protocol_client import ProtocolClient

from ..support.backends import Backend
from ..support.cluster import Cluster
from ..support.node import API_KEY
from ..support.timing import UNIT, wait_until
from .helpers import open_subscriber, publish_http

pytestmark = pytest.mark.cluster

HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}


def unsubscribed(subscriber: ProtocolClient, channel: str) -> bool:
    return any(e.get("push") == "unsubscribe" and e.get("channel") == channel for e in subscriber.events)


async def assert_fenced_out(
    http: httpx.AsyncClient, cluster: Cluster, room: str, fence: str, outsiders: list[ProtocolClient]
) -> None:
    """A publication in ``room`` reaches none of ``outsiders``.

    Each node reads pub/sub in publish order, so once an outsider has the later publication of the
    public ``fence`` room, its node has already handled (and not delivered) the one in ``room``.
    """
    await publish_http(http, cluster.nodes[0].http_url, room, "secret")
    marker = await publish_http(http, cluster.nodes[1].http_url, fence, "fence")
    for outsider in outsiders:
        await wait_until(
            lambda o=outsider: any(p["offset"] == marker["offset"] for p in o.of(fence)),
            timeout=10 * UNIT,
            what="the fence publication",
        )
        assert outsider.of(room) == [], (
            f"{outsider.info['user']} on {outsider.info['node']} still receives {room}"
        )


async def test_making_a_room_private_removes_its_non_members_on_every_node(cluster: Cluster) -> None:
    """Subscribed while the room was public, a non-member is removed on every node when it turns private."""
    name = f"priv{uuid.uuid4().hex[:8]}"
    room, fence = f"room:{name}", f"room:fence-{name}"
    eves = [await open_subscriber(node.ws_url, "eve", [room, fence]) for node in cluster.nodes]
    alice = await open_subscriber(cluster.nodes[1].ws_url, "alice", [room])
    try:
        async with httpx.AsyncClient(base_url=cluster.nodes[0].http_url, headers=HEADERS) as http:
            assert (await http.put(f"/api/rooms/{name}/members/alice")).status_code == 200
            assert (await http.post(f"/api/rooms/{name}", json={"private": True})).status_code == 200
            await wait_until(
                lambda: all(unsubscribed(eve, room) for eve in eves),
                timeout=10 * UNIT,
                what="every non-member removed from the room",
            )
            await assert_fenced_out(http, cluster, room, fence, eves)
            await alice.wait_for(room, 1)  # the member stays
            assert not unsubscribed(alice, room)
            refused = await eves[2].call("subscribe", channel=room)
            assert refused["error"]["code"] == 403
    finally:
        for subscriber in [*eves, alice]:
            await subscriber.close()


async def test_a_kick_sent_while_every_pubsub_link_is_cut_still_removes_the_member(
    cluster: Cluster, backend: Backend
) -> None:
    """The DELETE goes out while every node's pub/sub link is down: the kick is repaired, not lost."""
    name = f"kick{uuid.uuid4().hex[:8]}"
    room, fence = f"room:{name}", f"room:fence-{name}"
    async with httpx.AsyncClient(base_url=cluster.nodes[0].http_url, headers=HEADERS) as http:
        assert (await http.post(f"/api/rooms/{name}", json={"private": True})).status_code == 200
        assert (await http.put(f"/api/rooms/{name}/members/alice")).status_code == 200
        alices = [await open_subscriber(node.ws_url, "alice", [room, fence]) for node in cluster.nodes]
        try:
            reconnects = await _pubsub_links(backend, cluster)
            # Cut the links, remove the member while they are down, cut them again as they come back.
            await backend.kill_pubsub_links()
            assert (await http.delete(f"/api/rooms/{name}/members/alice")).status_code == 200
            await backend.kill_pubsub_links()
            await wait_until(
                lambda: all(unsubscribed(alice, room) for alice in alices),
                timeout=10 * UNIT,
                what="the kick on every node",
            )
            assert await _pubsub_links(backend, cluster) != reconnects  # the links really were cut
            await assert_fenced_out(http, cluster, room, fence, alices)
            for alice in alices:  # no node's cache still answers "member"
                assert (await alice.call("publish", channel=room, data="still here?"))["error"]["code"] == 403
        finally:
            for alice in alices:
                await alice.close()


async def _pubsub_links(backend: Backend, cluster: Cluster) -> set[str]:
    """The ids of the nodes' pub/sub connections now (they change when a link is cut)."""
    clients = await backend.pubsub_clients()
    names = {f"node:{node.node_id}:pubsub" for node in cluster.nodes}
    return {str(c["key"]) for c in clients if any(str(c.get("name", "")).endswith(n) for n in names)}
