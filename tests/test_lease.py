"""Leases: at most one holder at a time, released only by its holder, lost by a holder that dies.

RedisLease on a real server; LocalLease is the single-node stand-in that always holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.lease import LocalLease, RedisLease, run_once_periodically

from .support.timing import UNIT, wait_until


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2.0)
    try:
        yield client
    finally:
        await client.aclose()


async def test_local_lease_is_always_held() -> None:
    """The only node always gets the lease, renews it and may release it."""
    lease = LocalLease()
    assert await lease.acquire() and await lease.acquire()
    assert await lease.renew()
    await lease.release()


@pytest.mark.redis
async def test_one_holder_at_a_time_and_only_the_holder_releases(
    client: aioredis.Redis, key_prefix: str
) -> None:
    """A second node cannot take a held lease, nor free it by releasing; the holder's release frees it."""
    key = redis_keys.lease(key_prefix, "test")
    first, second = RedisLease(client, key, ttl=30.0), RedisLease(client, key, ttl=30.0)
    assert await first.acquire()
    assert not await second.acquire()
    await second.release()
    assert not await second.acquire()
    assert await first.renew() and not await second.renew()
    await first.release()
    assert await second.acquire()
    assert not await first.renew()


@pytest.mark.redis
async def test_a_dead_holder_loses_the_lease_after_its_ttl(client: aioredis.Redis, key_prefix: str) -> None:
    """A holder that never renews nor releases (it died) loses the lease to the next node within its TTL."""
    key = redis_keys.lease(key_prefix, "test")
    ttl = 0.3 * UNIT
    assert await RedisLease(client, key, ttl=ttl).acquire()
    survivor = RedisLease(client, key, ttl=ttl)
    assert not await survivor.acquire()
    await wait_until(survivor.acquire, timeout=ttl + 5 * UNIT, what="the lease of a dead holder to expire")


@pytest.mark.redis
async def test_periodic_work_runs_on_one_node_at_a_time(client: aioredis.Redis, key_prefix: str) -> None:
    """Three nodes run the same periodic task under one lease: it runs again and again, never twice at once."""
    key = redis_keys.lease(key_prefix, "tick")
    running, most, runs = 0, 0, 0

    async def task() -> None:
        nonlocal running, most, runs
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)  # let the other nodes try while this one holds the lease
        running -= 1
        runs += 1

    loops = [
        asyncio.create_task(run_once_periodically(RedisLease(client, key, ttl=5.0), 0.01, task, name="tick"))
        for _ in range(3)
    ]
    try:
        await wait_until(lambda: runs >= 10, what="ten runs of the periodic task")
    finally:
        # Cancel again until they end: a cancellation can get lost inside a Redis call (see worker.py).
        async with asyncio.timeout(5 * UNIT):
            while not all(loop.done() for loop in loops):
                for loop in loops:
                    loop.cancel()
                await asyncio.wait(loops, timeout=0.1)
    assert most == 1
