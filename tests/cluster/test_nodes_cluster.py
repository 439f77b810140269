"""GET /api/nodes across 3 real nodes on Redis: every node lists every live one, a dead one goes."""

from __future__ import annotations

import time

import httpx
import pytest

from tidings.client import Connection
from tidings.server.gateway.auth import issue_token

from ..support.cluster import Cluster
from ..support.node import API_KEY, SECRET
from ..support.timing import UNIT, wait_until

pytestmark = pytest.mark.cluster

HEADERS = {"authorization": f"Bearer {API_KEY}"}
NUMBERS = ("connections", "channels", "subscriptions", "published", "publications", "deliveries",
           "slow_disconnects")  # fmt: skip


async def listing(http: httpx.AsyncClient, base_url: str) -> dict[str, dict]:  # type: ignore[type-arg]
    response = await http.get(f"{base_url}/api/nodes", headers=HEADERS)
    assert response.status_code == 200, response.text
    return {node["node"]: node for node in response.json()["nodes"]}


async def test_every_node_lists_the_live_nodes_and_loses_a_dead_one(cluster: Cluster) -> None:
    node1, node2, node3 = cluster.nodes
    async with httpx.AsyncClient(timeout=5 * UNIT) as http:
        assert (await http.get(f"{node1.http_url}/api/nodes")).status_code == 401
        connection = Connection(node2.ws_url, issue_token("dora", SECRET), reconnect=False)
        await connection.connect(subscribe=["room:nodes"])
        try:
            await http.post(
                f"{node1.http_url}/api/publish", json={"channel": "room:nodes", "data": 1}, headers=HEADERS
            )

            async def counted() -> bool:
                seen = await listing(http, node3.http_url)
                if set(seen) != {"node-1", "node-2", "node-3"}:
                    return False
                return seen["node-2"]["deliveries"] >= 1 and seen["node-1"]["published"] >= 1

            # Each node's numbers are as of its last heartbeat (once a second).
            await wait_until(counted, timeout=10 * UNIT, what="the publication in /api/nodes")
            for base_url in (node1.http_url, node2.http_url):
                seen = await listing(http, base_url)
                assert set(seen) == {"node-1", "node-2", "node-3"}
                for node in seen.values():
                    assert all(isinstance(node[name], int) and node[name] >= 0 for name in NUMBERS)
                    assert node["incarnation"].startswith(f"{node['node']}~")
                    assert node["started"] <= node["updated"]
                assert seen["node-2"]["connections"] == 1 and seen["node-2"]["subscriptions"] == 2
                assert seen["node-1"]["published"] >= 1 and seen["node-2"]["deliveries"] >= 1
        finally:
            await connection.close()

        node3.kill()
        killed = time.monotonic()

        async def node3_gone() -> bool:
            return set(await listing(http, node1.http_url)) == {"node-1", "node-2"}

        await wait_until(node3_gone, timeout=10 * UNIT, what="node-3 to leave /api/nodes")
        assert time.monotonic() - killed < 10
