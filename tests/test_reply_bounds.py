"""Every reply is bounded in bytes before it is built (issue 13, item 1), and reads create nothing (item 6).

A reply bigger than the connection's outbox used to close the client with 4008, which tells it to
reconnect and recover, so it asked for the same reply again, forever. Now recovery that does not fit
answers ``recovered: false``; history and notification pages carry a cursor to read on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tidings.server.gateway.protocol import Codec

from .support.node import API_KEY, RunningNode, run_node
from .support.node import test_settings as node_settings
from .test_gateway import codec, connected, make_token, raw_client

__all__ = ["codec"]  # the JSON/MessagePack fixture of test_gateway, used here too

pytestmark = pytest.mark.redis

AUTH = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
BIG = 60 * 1024  # bytes of one publication
COUNT = 40  # 2.4 MB in all: more than the 1 MiB outbox


@pytest.fixture
async def redis_node(redis_url: str, key_prefix: str) -> AsyncIterator[RunningNode]:
    async with run_node(node_settings(redis_url=redis_url, key_prefix=key_prefix)) as running:
        yield running


async def publish_big(node: RunningNode, channel: str, count: int = COUNT) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=node.http_url, headers=AUTH) as http:
        positions = []
        for n in range(count):
            response = await http.post(
                "/api/publish", json={"channel": channel, "data": {"n": n, "pad": "x" * BIG}}
            )
            assert response.status_code == 200, response.text
            positions.append(response.json())
    return positions


async def test_a_resubscribe_that_does_not_fit_answers_not_recovered_and_keeps_the_connection(
    redis_node: RunningNode, codec: Codec
) -> None:
    """2.4 MB missed: subscribe with since answers recovered false within the budget; no 4008."""
    [first, *_] = await publish_big(redis_node, "room:big")
    since = {"epoch": first["epoch"], "offset": 0}
    async with connected(redis_node, "alice", codec) as client:
        reply = await client.call("subscribe", channel="room:big", since=since)
        assert reply["result"]["recovered"] is False and reply["result"]["offset"] == COUNT
        assert reply["result"]["publications"] == []
        assert "result" in await client.call("ping")  # still open


async def test_a_reconnect_with_since_that_does_not_fit_is_not_closed(
    redis_node: RunningNode, codec: Codec
) -> None:
    """connect with since on two channels shares one budget: each is recovered or told recovered false."""
    [first, *_] = await publish_big(redis_node, "room:big")
    small = await publish_big(redis_node, "room:small", count=2)
    async with raw_client(redis_node, codec) as client:
        result = await client.connect(
            make_token("alice"),
            subscribe=[
                {"channel": "room:small", "since": {"epoch": small[0]["epoch"], "offset": 0}},
                {"channel": "room:big", "since": {"epoch": first["epoch"], "offset": 0}},
            ],
        )
        channels = result["channels"]
        assert (
            channels["room:small"]["recovered"] is True and len(channels["room:small"]["publications"]) == 2
        )
        assert channels["room:big"]["recovered"] is False
        assert "result" in await client.call("ping")


async def test_history_pages_are_bounded_in_bytes_and_the_cursor_reads_everything_once(
    redis_node: RunningNode, codec: Codec
) -> None:
    """A history read of 2.4 MB comes in pages that fit; following the cursor yields every offset once."""
    await publish_big(redis_node, "room:big")
    async with connected(redis_node, "alice", codec) as client:
        seen: list[int] = []
        request: dict[str, Any] = {"channel": "room:big", "limit": 1000}
        for _ in range(COUNT + 1):
            reply = (await client.call("history", **request))["result"]
            assert len(reply["publications"]) < COUNT
            seen += [p["offset"] for p in reply["publications"]]
            if "cursor" not in reply:
                break
            request = {**request, **reply["cursor"]}
        assert seen == list(range(1, COUNT + 1))
        newest_first: list[int] = []
        request = {"channel": "room:big", "limit": 1000, "reverse": True}
        for _ in range(COUNT + 1):
            reply = (await client.call("history", **request))["result"]
            newest_first += [p["offset"] for p in reply["publications"]]
            if "cursor" not in reply:
                break
            request = {**request, **reply["cursor"]}
        assert newest_first == list(range(COUNT, 0, -1))


async def test_http_history_pages_carry_a_cursor_as_query_parameters(redis_node: RunningNode) -> None:
    """GET .../history is bounded the same way; its cursor is the next request's query parameters."""
    await publish_big(redis_node, "room:big")
    async with httpx.AsyncClient(base_url=redis_node.http_url, headers=AUTH) as http:
        seen: list[int] = []
        params: dict[str, Any] = {"limit": 1000}
        for _ in range(COUNT + 1):
            response = await http.get("/api/channels/room:big/history", params=params)
            assert response.status_code == 200
            body = response.json()
            assert len(body["publications"]) < COUNT  # 2.4 MB never comes as one reply
            seen += [p["offset"] for p in body["publications"]]
            if "cursor" not in body:
                break
            params = {**params, **body["cursor"]}
        assert seen == list(range(1, COUNT + 1))


async def test_notification_pages_are_bounded_in_bytes(redis_node: RunningNode) -> None:
    """A user with 2 MB of notifications reads them in pages that fit, every one once, the connection open."""
    async with httpx.AsyncClient(base_url=redis_node.http_url, headers=AUTH) as http:
        for n in range(100):
            body = {"users": ["alice"], "type": "big", "title": f"n{n}", "data": {"pad": "y" * 15000}}
            response = await http.post("/api/notifications", json=body)
            assert response.status_code == 200, response.text
    async with connected(redis_node, "alice") as client:
        titles: list[str] = []
        request: dict[str, Any] = {"limit": 200}
        for _ in range(101):
            reply = (await client.call("notifications", **request))["result"]
            assert len(reply["notifications"]) < 100
            titles += [n["title"] for n in reply["notifications"]]
            if "cursor" not in reply:
                break
            request = {"limit": 200, "before": reply["cursor"]}
        assert titles == [f"n{n}" for n in range(99, -1, -1)]


async def test_reading_the_history_of_a_channel_that_has_none_creates_no_key(
    redis_node: RunningNode, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """history (op and HTTP) of a never-used channel answers offset 0 and leaves Redis as it was."""
    async with connected(redis_node, "alice") as client:
        for n in range(20):
            reply = await client.call("history", channel=f"room:nothing-{n}")
            assert reply["result"]["offset"] == 0 and reply["result"]["publications"] == []
    async with httpx.AsyncClient(base_url=redis_node.http_url, headers=AUTH) as http:
        response = await http.get("/api/channels/room:nothing-http/history")
        assert response.status_code == 200 and response.json()["offset"] == 0
    assert [key async for key in redis_client.scan_iter(match=f"{key_prefix}:*nothing*")] == []


async def test_fifty_clients_recovering_too_much_at_once_keep_node_memory_bounded(
    redis_url: str, key_prefix: str
) -> None:
    """50 reconnects asking for 2.4 MB each: every one answered recovered false, node RSS peak grows < 64 MB."""
    from .support.cluster import start_cluster

    with start_cluster(1, redis_url=redis_url, key_prefix=key_prefix) as cluster:
        [process] = cluster.nodes
        node = RunningNode.__new__(RunningNode)  # only its URLs are used
        node.port = int(process.http_url.rsplit(":", 1)[1])
        [first, *_] = await publish_big(node, "room:big")
        before = _peak_rss(process.pid)

        async def reconnect(n: int) -> dict[str, Any]:
            async with raw_client(node) as client:
                result = await client.connect(
                    make_token(f"u{n}"),
                    subscribe=[{"channel": "room:big", "since": {"epoch": first["epoch"], "offset": 0}}],
                )
                assert "result" in await client.call("ping")
                return result

        results = await asyncio.gather(*(reconnect(n) for n in range(50)))
        assert all(r["channels"]["room:big"]["recovered"] is False for r in results)
        grown = _peak_rss(process.pid) - before
        assert grown < 64 * 1024 * 1024, f"peak RSS grew by {grown / 1e6:.0f} MB"


def _peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


async def test_presence_of_a_crowded_room_is_bounded_and_says_so() -> None:
    """3,000 members do not fit a 128 KiB outbox: the reply lists those that fit, complete false, total."""
    from tidings.server.cluster.presence import Member
    from tidings.server.node import NodeState

    async with run_node(node_settings(outbox_size=128 * 1024)) as node:
        state: NodeState = node.server.lifespan.state  # type: ignore[assignment]
        for n in range(3000):
            await state["presence"].add(
                "room:crowd", Member(f"user{n}", f"client{n:06d}", "node-x", {"name": f"U {n}"})
            )
        async with connected(node, "alice") as client:
            reply = (await client.call("presence", channel="room:crowd"))["result"]
            assert reply["complete"] is False and reply["total"] == 3000
            assert 0 < len(reply["members"]) < 3000
            assert "result" in await client.call("ping")
        async with httpx.AsyncClient(base_url=node.http_url, headers=AUTH) as http:
            body = (await http.get("/api/channels/room:crowd/presence")).json()
            assert body["complete"] is False and len(body["members"]) == len(reply["members"])
