"""Presence, private rooms and user-targeted commands across 3 real nodes (issue: presence and users)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import httpx
import pytest

from tidings.client import CallError, Connection
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.redis_client import StoreClient
from tidings.server.gateway.auth import issue_token

from ..support.backends import Backend
from ..support.cluster import Cluster, NodeProcess, start_cluster
from ..support.node import API_KEY, SECRET
from ..support.timing import UNIT, wait_until

pytestmark = pytest.mark.cluster

HEADERS = {"authorization": f"Bearer {API_KEY}"}


def token(user: str) -> str:
    return issue_token(user, SECRET)


async def open_connection(url: str, user: str, channels: list[str] = ()) -> Connection:  # type: ignore[assignment]
    connection = Connection(url, token(user), reconnect=False)
    await connection.connect(subscribe=list(channels))
    return connection


async def pushes_until(
    connection: Connection, predicate: Any, *, timeout: float = 10 * UNIT
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            push = await connection.recv()
            if predicate(push):
                return push


async def test_presence_lists_each_connection_once_and_join_leave_cross_nodes(cluster: Cluster) -> None:
    """Connections on 3 nodes are each listed once by every node; join/leave reach the other nodes."""
    room = f"room:p{uuid.uuid4().hex[:8]}"
    watcher = await open_connection(cluster.nodes[0].ws_url, "watcher", [room])
    members = [await open_connection(node.ws_url, f"u{i}", [room]) for i, node in enumerate(cluster.nodes)]
    try:
        expected = sorted([watcher.info["client"]] + [m.info["client"] for m in members])
        for node in cluster.nodes:
            async with httpx.AsyncClient(base_url=node.http_url, headers=HEADERS) as http:
                body = (await http.get(f"/api/channels/{room}/presence")).json()
            assert sorted(m["client"] for m in body["members"]) == expected
        assert {m["node"] for m in await watcher.presence(room)} == {n.node_id for n in cluster.nodes}
        for member in members[1:]:  # joined on node-2 and node-3, seen on node-1
            joined = await pushes_until(
                watcher,
                lambda p, c=member.info["client"]: p.get("push") == "join" and p["member"]["client"] == c,
            )
            assert joined["channel"] == room
        leaving = members.pop()
        await leaving.close()
        left = await pushes_until(
            watcher, lambda p: p.get("push") == "leave" and p["member"]["client"] == leaving.info["client"]
        )
        assert left["member"]["node"] == cluster.nodes[2].node_id
    finally:
        for connection in [watcher, *members]:
            await connection.close()


async def test_private_room_membership_is_consistent_on_every_node(cluster: Cluster) -> None:
    """A private room rejects a non-member on every node; removal on node A kicks and rejects on node C at once."""
    name = f"s{uuid.uuid4().hex[:8]}"
    room = f"room:{name}"
    a, c = cluster.nodes[0], cluster.nodes[2]
    async with httpx.AsyncClient(base_url=a.http_url, headers=HEADERS) as http_a:
        assert (await http_a.post(f"/api/rooms/{name}", json={"private": True})).status_code == 200
        outsiders = [await open_connection(node.ws_url, "eve") for node in cluster.nodes]
        try:
            for outsider in outsiders:
                with pytest.raises(CallError) as error:
                    await outsider.subscribe(room)
                assert error.value.code == 403
        finally:
            for outsider in outsiders:
                await outsider.close()
        assert (await http_a.put(f"/api/rooms/{name}/members/alice")).status_code == 200
        alice = await open_connection(c.ws_url, "alice", [room])  # node C cached "member" just now
        try:
            await alice.publish(room, "hello")
            assert (await http_a.delete(f"/api/rooms/{name}/members/alice")).status_code == 200
            kicked = await pushes_until(alice, lambda p: p.get("push") == "unsubscribe")
            assert kicked["channel"] == room
            with pytest.raises(CallError) as error:
                await alice.publish(room, "still here?")
            assert error.value.code == 403
            with pytest.raises(CallError) as error:
                await alice.subscribe(room)
            assert error.value.code == 403
        finally:
            await alice.close()


async def test_send_to_user_and_disconnect_user_reach_all_nodes(cluster: Cluster) -> None:
    """A user connected on 3 nodes gets a send-to-user on all 3, and disconnect-user closes all 3."""
    user = f"u{uuid.uuid4().hex[:8]}"
    connections = [await open_connection(node.ws_url, user) for node in cluster.nodes]
    bystander = await open_connection(cluster.nodes[1].ws_url, "bystander")
    try:
        async with httpx.AsyncClient(base_url=cluster.nodes[1].http_url, headers=HEADERS) as http:
            body = (await http.get(f"/api/users/{user}/presence")).json()
            assert body["connections"] == 3 and sorted(body["nodes"]) == sorted(
                n.node_id for n in cluster.nodes
            )
            sent = await http.post("/api/publish", json={"channel": f"user:{user}", "data": {"dm": "ping"}})
            assert sent.status_code == 200
            for connection in connections:
                push = await connection.publications(f"user:{user}", timeout=10 * UNIT)
                assert push["data"] == {"dm": "ping"}
            assert (await http.post(f"/api/users/{user}/disconnect", json={})).status_code == 200
        for connection in connections:
            closed = await pushes_until(connection, lambda p: p.get("push") == "closed")
            assert closed["code"] == 4503
        await bystander.ping()
    finally:
        for connection in [*connections, bystander]:
            await connection.close()


async def test_typing_indicator_crosses_nodes(cluster: Cluster) -> None:
    """An ephemeral publication on node 1 reaches a subscriber on node 3 without offset or history."""
    room = f"room:t{uuid.uuid4().hex[:8]}"
    sender = await open_connection(cluster.nodes[0].ws_url, "typist")
    reader = await open_connection(cluster.nodes[2].ws_url, "reader", [room])
    try:
        await sender.publish(room, {"typing": True}, ephemeral=True)
        push = await reader.publications(room, timeout=10 * UNIT)
        assert push["data"] == {"typing": True} and "offset" not in push
        assert (await reader.history(room))["publications"] == []
    finally:
        await sender.close()
        await reader.close()


async def test_sigkilled_node_is_removed_from_presence_once(backend: Backend) -> None:
    """SIGKILL a node holding 50 connections: within 10 s they leave presence, each leave announced once."""
    room = f"room:k{uuid.uuid4().hex[:8]}"
    with start_cluster(3, redis_url=backend.url, key_prefix=f"t-{uuid.uuid4().hex[:12]}") as cluster:
        doomed_node = cluster.nodes[0]
        watchers = [
            await open_connection(node.ws_url, f"w{i}", [room]) for i, node in enumerate(cluster.nodes[1:])
        ]
        doomed = await asyncio.gather(
            *(open_connection(doomed_node.ws_url, f"d{i}", [room]) for i in range(50))
        )
        doomed_clients = {c.info["client"] for c in doomed}
        try:
            async with httpx.AsyncClient(base_url=cluster.nodes[1].http_url, headers=HEADERS) as http:

                async def member_count() -> int:
                    body = (await http.get(f"/api/channels/{room}/presence")).json()
                    return len(body["members"])

                await wait_until(lambda: _equals(member_count(), 52), what="52 members present")
                doomed_node.kill()
                killed_at = time.monotonic()
                await wait_until(
                    lambda: _equals(member_count(), 2), timeout=10 * UNIT, what="dead node's members removed"
                )
                assert time.monotonic() - killed_at < 10 * UNIT
            for watcher in watchers:
                leaves: list[str] = []
                while set(leaves) != doomed_clients:
                    push = await pushes_until(watcher, lambda p: p.get("push") == "leave")
                    leaves.append(push["member"]["client"])
                # Emitted once, not once per surviving node: a short grace for late duplicates.
                with pytest.raises(TimeoutError):
                    await pushes_until(watcher, lambda p: p.get("push") == "leave", timeout=1.5 * UNIT)
                assert len(leaves) == 50
        finally:
            for connection in [*watchers, *doomed]:
                await connection.close()


async def test_fast_restart_under_the_same_node_id_sweeps_the_dead_incarnation(
    backend: Backend, backend_client: StoreClient
) -> None:
    """SIGKILL a node and start it again at once with the same node id: within 10 s its old connections
    leave presence, each leave announced once, and the connections of the new process stay."""
    room = f"room:r{uuid.uuid4().hex[:8]}"
    with start_cluster(2, redis_url=backend.url, key_prefix=f"t-{uuid.uuid4().hex[:12]}") as cluster:
        prefix = cluster.key_prefix
        watcher = await open_connection(cluster.nodes[0].ws_url, "watcher", [room])
        old = await asyncio.gather(
            *(open_connection(cluster.nodes[1].ws_url, f"old{i}", [room]) for i in range(10))
        )
        old_clients = {c.info["client"] for c in old}
        connections = [watcher, *old]
        try:
            async with httpx.AsyncClient(base_url=cluster.nodes[0].http_url, headers=HEADERS) as http:

                async def present() -> set[str]:
                    body = (await http.get(f"/api/channels/{room}/presence")).json()
                    return {m["client"] for m in body["members"]}

                async def listed(expected: set[str]) -> bool:
                    return await present() == expected

                await wait_until(lambda: listed({watcher.info["client"], *old_clients}), what="11 members")
                cluster.nodes[1].kill()
                killed_at = time.monotonic()
                restarted = cluster.restart(1)

                async def answers() -> bool:
                    assert restarted.alive(), restarted.log_tail()
                    with contextlib.suppress(httpx.HTTPError):
                        return (await http.get(f"{restarted.http_url}/readyz")).status_code == 200
                    return False

                await wait_until(answers, timeout=10 * UNIT, what="the restarted node ready")
                newcomer = await open_connection(restarted.ws_url, "newcomer", [room])
                connections.append(newcomer)
                expected = {watcher.info["client"], newcomer.info["client"]}
                await wait_until(
                    lambda: listed(expected), timeout=10 * UNIT, what="the old connections gone from presence"
                )
                assert time.monotonic() - killed_at < 10 * UNIT

                async def swept() -> bool:  # the sweep announces the leaves, then unregisters the dead
                    registered = await backend_client.smembers(redis_keys.nodes(prefix))
                    alive = [
                        await backend_client.exists(redis_keys.node_alive(prefix, n.decode()))
                        for n in registered
                    ]
                    return all(alive)

                await wait_until(swept, timeout=5 * UNIT, what="the dead incarnation unregistered")
                # Published after the sweep ended: once the watcher has it, every leave of the sweep is in.
                marker = await http.post("/api/publish", json={"channel": room, "data": "after the sweep"})
                assert marker.status_code == 200
            leaves: list[str] = []
            while True:
                push = await watcher.recv(timeout=5 * UNIT)
                if push.get("push") == "leave":
                    leaves.append(push["member"]["client"])
                elif push.get("push") == "publication" and push["data"] == "after the sweep":
                    break
            assert sorted(leaves) == sorted(old_clients)  # one leave per old connection, none for the new
            assert await present_on(cluster.nodes[1], room) == expected
        finally:
            for connection in connections:
                await connection.close()


async def present_on(node: NodeProcess, room: str) -> set[str]:
    async with httpx.AsyncClient(base_url=node.http_url, headers=HEADERS) as http:
        body = (await http.get(f"/api/channels/{room}/presence")).json()
    return {m["client"] for m in body["members"]}


async def _equals(awaitable: Any, expected: int) -> bool:
    return bool(await awaitable == expected)
