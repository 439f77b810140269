"""The Presence contract, run over every implementation: whatever memory does, Redis must match.

Then Redis-only behaviour: entries are indexed per process incarnation, so a process restarted
under the same node id neither adopts nor hides the entries of the one that died.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from tidings.server.cluster.presence import Member, Presence
from tidings.server.cluster.presence_memory import InMemoryPresence
from tidings.server.cluster.presence_redis import RedisPresence

PresenceOf = Callable[[str], Presence]
"""``presence_of(incarnation)``: the presence store of one node process (memory: one shared store,
whose ``remove_node`` takes the node id; Redis: one store per incarnation, over one key prefix)."""


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def presence_of(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[PresenceOf]:
    if request.param == "memory":
        shared = InMemoryPresence()
        yield lambda incarnation: shared
        return
    client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"), socket_timeout=2.0)
    try:
        yield lambda incarnation: RedisPresence(client, key_prefix=key_prefix, incarnation=incarnation)
    finally:
        await client.aclose()


def clients(members: list[Member]) -> list[str]:
    return sorted(member.client for member in members)


async def test_members_lists_each_connection_once(presence_of: PresenceOf) -> None:
    """Adding a connection twice keeps one entry; each client of each user is listed once."""
    presence = presence_of("n1")
    for user, client in [("alice", "c1"), ("alice", "c1"), ("alice", "c2"), ("bob", "c3")]:
        await presence.add("room:a", Member(user, client, "n1"))
    members = await presence.members("room:a")
    assert clients(members) == ["c1", "c2", "c3"]
    assert sorted(member.user for member in members) == ["alice", "alice", "bob"]


async def test_member_info_round_trips(presence_of: PresenceOf) -> None:
    """A member comes back with its user, client, node and info as added."""
    presence = presence_of("n1")
    member = Member("alice", "c1", "n1", {"name": "Alice", "tags": ["a", "b"], "n": 3})
    await presence.add("user:alice", member)
    assert await presence.members("user:alice") == [member]


async def test_remove_takes_out_one_connection_and_ignores_unknown_ones(presence_of: PresenceOf) -> None:
    """remove drops that client only; removing an absent one, or from an empty channel, changes nothing."""
    presence = presence_of("n1")
    await presence.add("room:a", Member("alice", "c1", "n1"))
    await presence.add("room:a", Member("bob", "c2", "n1"))
    await presence.remove("room:a", Member("alice", "c1", "n1"))
    await presence.remove("room:a", Member("alice", "c1", "n1"))
    await presence.remove("room:empty", Member("zed", "c9", "n1"))
    assert clients(await presence.members("room:a")) == ["c2"]
    assert await presence.members("room:empty") == []


async def test_channels_are_independent(presence_of: PresenceOf) -> None:
    """The same client in two channels is two entries; removing one leaves the other."""
    presence = presence_of("n1")
    member = Member("alice", "c1", "n1")
    await presence.add("room:a", member)
    await presence.add("room:a:b", member)
    await presence.remove("room:a", member)
    assert await presence.members("room:a") == []
    assert await presence.members("room:a:b") == [member]


async def test_remove_node_removes_only_its_entries_and_reports_each_once(presence_of: PresenceOf) -> None:
    """remove_node drops every entry the dead node added, in every channel, and returns them; a repeat finds none."""
    dead, alive = presence_of("n1"), presence_of("n2")
    await dead.add("room:a", Member("u1", "c1", "n1"))
    await dead.add("user:u1", Member("u1", "c1", "n1"))
    await alive.add("room:a", Member("u2", "c2", "n2"))
    removed = await alive.remove_node("n1")
    assert sorted((channel, m.client) for channel, m in removed) == [("room:a", "c1"), ("user:u1", "c1")]
    assert await alive.remove_node("n1") == []
    assert clients(await alive.members("room:a")) == ["c2"]
    assert await alive.members("user:u1") == []


async def test_remove_node_skips_entries_already_removed(presence_of: PresenceOf) -> None:
    """An entry its connection removed itself is not reported again by remove_node (no second leave)."""
    presence = presence_of("n1")
    await presence.add("room:a", Member("u1", "c1", "n1"))
    await presence.add("room:a", Member("u2", "c2", "n1"))
    await presence.remove("room:a", Member("u1", "c1", "n1"))
    removed = await presence_of("n2").remove_node("n1")
    assert [(channel, m.client) for channel, m in removed] == [("room:a", "c2")]


async def test_concurrent_removers_report_each_entry_once(presence_of: PresenceOf) -> None:
    """Two survivors sweeping the same dead node at once announce each of its entries once in total."""
    dead = presence_of("n1")
    for n in range(20):
        await dead.add(f"room:{n % 3}", Member(f"u{n}", f"c{n}", "n1"))
    first, second = await asyncio.gather(
        presence_of("n2").remove_node("n1"), presence_of("n3").remove_node("n1")
    )
    reported = [m.client for _, m in first + second]
    assert sorted(reported) == sorted(f"c{n}" for n in range(20))


# --- Redis only ------------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_restarted_process_keeps_its_entries_when_the_dead_one_is_swept(
    redis_url: str, key_prefix: str
) -> None:
    """Two incarnations of node n1: sweeping the dead one removes its entries only, not the new process's."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2.0)
    try:
        old = RedisPresence(client, key_prefix=key_prefix, incarnation="n1~old")
        new = RedisPresence(client, key_prefix=key_prefix, incarnation="n1~new")
        await old.add("room:a", Member("alice", "c1", "n1"))
        await new.add("room:a", Member("bob", "c2", "n1"))
        removed = await new.remove_node("n1~old")
        assert [(channel, m.client) for channel, m in removed] == [("room:a", "c1")]
        assert clients(await new.members("room:a")) == ["c2"]
        assert await new.remove_node("n1") == []  # the bare node id indexes nothing
    finally:
        await client.aclose()
