"""Presence, private rooms, typing and disconnects on one real node (memory backplane).

The presence store's own contract, over memory and Redis, is tests/test_presence_store.py.
"""

from __future__ import annotations

import httpx
import pytest

from tidings.client import CallError, Connection, ConnectionClosed

from .support.node import API_KEY
from .support.timing import UNIT, wait_until

HEADERS = {"authorization": f"Bearer {API_KEY}"}


async def next_push(
    connection: Connection, kind: str, channel: str | None = None, user: str | None = None
) -> dict:
    """The next push of ``kind`` (skipping others; for join/leave, of ``user``), within a deadline."""
    while True:
        push = await connection.recv(timeout=5 * UNIT)
        if push.get("push") != kind or (channel is not None and push.get("channel") != channel):
            continue
        if user is None or push.get("member", {}).get("user") == user:
            return push


async def test_presence_lists_each_connection_once(node, token):
    """Two connections of alice and one of bob in a room: three members, each client once."""
    async with (
        Connection(node.ws_url, token("alice")) as a1,
        Connection(node.ws_url, token("alice")) as a2,
        Connection(node.ws_url, token("bob")) as b,
    ):
        for connection in (a1, a2, b):
            await connection.subscribe("room:hall")
        members = await b.presence("room:hall")
        clients = sorted(m["client"] for m in members)
        assert clients == sorted({a1.info["client"], a2.info["client"], b.info["client"]})
        assert sorted(m["user"] for m in members) == ["alice", "alice", "bob"]
        assert all(m["node"] == b.node for m in members)


async def test_join_and_leave_are_pushed_to_room_subscribers(node, token):
    """bob sees alice join and leave the room; the member names her connection."""
    async with Connection(node.ws_url, token("bob")) as bob:
        await bob.subscribe("room:hall")
        alice = Connection(node.ws_url, token("alice"))
        await alice.connect()
        await alice.subscribe("room:hall")
        joined = await next_push(bob, "join", "room:hall", user="alice")
        assert joined["member"]["user"] == "alice"
        assert joined["member"]["client"] == alice.info["client"]
        await alice.close()
        left = await next_push(bob, "leave", "room:hall", user="alice")
        assert left["member"]["client"] == alice.info["client"]
        assert [m["user"] for m in await bob.presence("room:hall")] == ["bob"]


async def test_user_presence_api_counts_connections(node, token):
    """GET /api/users/{user}/presence reports the user's connections and nodes, and offline users."""
    async with httpx.AsyncClient(base_url=node.http_url, headers=HEADERS) as http:
        async with Connection(node.ws_url, token("carol")), Connection(node.ws_url, token("carol")):
            body = (await http.get("/api/users/carol/presence")).json()
            assert body["online"] is True and body["connections"] == 2 and len(body["nodes"]) == 1
        await wait_until(lambda: _offline(http, "carol"), what="carol offline after closing both connections")


async def _offline(http: httpx.AsyncClient, user: str) -> bool:
    return (await http.get(f"/api/users/{user}/presence")).json()["online"] is False


async def test_private_room_rejects_non_members_and_kicks_removed_member(node, token):
    """Only members use a private room; removing a member ends their live subscription at once."""
    async with httpx.AsyncClient(base_url=node.http_url, headers=HEADERS) as http:
        assert (await http.post("/api/rooms/secret", json={"private": True})).status_code == 200
        assert (await http.put("/api/rooms/secret/members/alice")).status_code == 200
        async with (
            Connection(node.ws_url, token("alice")) as alice,
            Connection(node.ws_url, token("eve")) as eve,
        ):
            await alice.subscribe("room:secret")
            for attempt in (
                eve.subscribe("room:secret"),
                eve.publish("room:secret", "hi"),
                eve.history("room:secret"),
            ):
                with pytest.raises(CallError) as error:
                    await attempt
                assert error.value.code == 403
            assert (await http.delete("/api/rooms/secret/members/alice")).status_code == 200
            kicked = await next_push(alice, "unsubscribe", "room:secret")
            assert kicked["channel"] == "room:secret"
            with pytest.raises(CallError) as error:
                await alice.publish("room:secret", "still here?")
            assert error.value.code == 403


async def test_typing_is_ephemeral(node, token):
    """An ephemeral publication reaches subscribers without offset and stays out of history."""
    async with Connection(node.ws_url, token("alice")) as alice, Connection(node.ws_url, token("bob")) as bob:
        await bob.subscribe("room:hall")
        result = await alice.publish("room:hall", {"typing": True}, ephemeral=True)
        assert result == {}
        push = await bob.publications("room:hall", timeout=5 * UNIT)
        assert push["data"] == {"typing": True} and "offset" not in push
        assert push["from"]["user"] == "alice"
        assert (await bob.history("room:hall"))["publications"] == []


async def test_disconnect_user_closes_all_their_connections(node, token):
    """POST /api/users/{user}/disconnect closes every connection of the user and no other."""
    async with httpx.AsyncClient(base_url=node.http_url, headers=HEADERS) as http:
        first, second = Connection(node.ws_url, token("mallory")), Connection(node.ws_url, token("mallory"))
        await first.connect()
        await second.connect()
        async with Connection(node.ws_url, token("bob")) as bob:
            response = await http.post("/api/users/mallory/disconnect", json={"reason": "banned"})
            assert response.status_code == 200
            for connection in (first, second):
                closed = await next_push(connection, "closed")
                assert closed["code"] == 4503
                with pytest.raises(ConnectionClosed):
                    await connection.ping()
            await bob.ping()  # others carry on
