"""The RoomDirectory contract, run over every implementation, and the access cache in front of each.

The cache's own rules (bounded, invalidated per room, never the reason a kick is missed) are
tests/test_room_access.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tidings.server.cluster.rooms import CachedRooms, RoomDirectory
from tidings.server.cluster.rooms_memory import InMemoryRooms
from tidings.server.cluster.rooms_redis import RedisRooms


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def directory(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[RoomDirectory]:
    if request.param == "memory":
        yield InMemoryRooms()
        return
    client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"), socket_timeout=2.0)
    try:
        yield RedisRooms(client, key_prefix=key_prefix)
    finally:
        await client.aclose()


async def test_an_unknown_room_is_public_and_has_no_members(directory: RoomDirectory) -> None:
    """A room nobody created is public; nobody is a member of it."""
    assert not await directory.is_private("lobby")
    assert not await directory.is_member("lobby", "alice")


async def test_a_private_room_knows_its_members(directory: RoomDirectory) -> None:
    """Members added are members, others are not; a removed member is not; removing twice is harmless."""
    await directory.create("secret", private=True)
    await directory.add_member("secret", "alice")
    await directory.add_member("secret", "bob")
    await directory.add_member("secret", "bob")
    assert await directory.is_private("secret")
    assert await directory.is_member("secret", "alice")
    assert not await directory.is_member("secret", "eve")
    await directory.remove_member("secret", "bob")
    await directory.remove_member("secret", "bob")
    await directory.remove_member("secret", "nobody")
    assert not await directory.is_member("secret", "bob")
    assert await directory.is_member("secret", "alice")


async def test_create_switches_a_room_between_public_and_private_and_keeps_members(
    directory: RoomDirectory,
) -> None:
    """create(private=False) makes a private room public again; its member list stays for next time."""
    await directory.create("team", private=True)
    await directory.add_member("team", "alice")
    await directory.create("team", private=False)
    assert not await directory.is_private("team")
    await directory.create("team", private=True)
    assert await directory.is_private("team")
    assert await directory.is_member("team", "alice")


async def test_rooms_are_independent(directory: RoomDirectory) -> None:
    """Settings and members of one room say nothing about another, even one whose name extends it."""
    await directory.create("a", private=True)
    await directory.add_member("a", "alice")
    assert not await directory.is_private("a:b")
    assert not await directory.is_member("a:b", "alice")
    assert not await directory.is_member("b", "alice")


async def test_the_cache_answers_like_its_directory(directory: RoomDirectory) -> None:
    """Through CachedRooms: public rooms are open to all, private ones to members, and a change shows after invalidate."""
    cache = CachedRooms(directory)
    await directory.create("secret", private=True)
    await directory.add_member("secret", "alice")
    assert await cache.may_access("lobby", "eve")
    assert await cache.may_access("secret", "alice")
    assert not await cache.may_access("secret", "eve")
    await directory.remove_member("secret", "alice")
    cache.invalidate("secret")
    assert not await cache.may_access("secret", "alice")
