"""Work that exactly one node of the cluster must do.

:class:`Lease` is the building block: a Redis key taken with ``SET NX PX`` and a
random token, renewed while held, released only by its holder (compare and
delete in Lua). :func:`run_once_periodically` runs a task every ``interval`` on
whichever node holds the lease at that moment, so a periodic job (dead-node
clean-up, scheduled notifications) runs once per tick across the cluster and
moves to another node within one lease TTL when its node dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["Lease", "LocalLease", "run_once_periodically"]

logger = logging.getLogger("tidings.jobs")

# KEYS[1] lease key; ARGV[1] holder token. Deletes the key only if we still hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] lease key; ARGV[1] holder token, ARGV[2] ttl in ms. Extends the key only if we still hold it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Lease:
    """A cluster-wide mutual exclusion with a TTL: at most one holder at a time.

    Guarantee: while ``acquire`` returned True and less than ``ttl`` has passed
    (or the last ``renew`` succeeded), no other node holds it. A holder that dies
    loses it after ``ttl``.
    """

    def __init__(self, client: aioredis.Redis, key: str, *, ttl: float) -> None:
        self._redis = client
        self.key = key
        self.ttl = ttl
        self._token = secrets.token_hex(8)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    async def acquire(self) -> bool:
        return bool(await self._redis.set(self.key, self._token, nx=True, px=int(self.ttl * 1000)))

    async def renew(self) -> bool:
        return bool(await self._renew(keys=[self.key], args=[self._token, int(self.ttl * 1000)]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self._token])


class LocalLease:
    """The single-node stand-in for :class:`Lease`: the only node always holds it."""

    def __init__(self, key: str = "local", *, ttl: float = 1.0) -> None:
        self.key = key
        self.ttl = ttl

    async def acquire(self) -> bool:
        return True

    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        return None


async def run_once_periodically(
    lease: Lease | LocalLease, interval: float, task: Callable[[], Awaitable[None]], *, name: str
) -> None:
    """Every ``interval`` seconds, run ``task`` if this node gets ``lease``; runs until cancelled.

    A failing task or an unreachable Redis is logged (once per change) and retried next tick.
    """
    failing = False
    while True:
        try:
            if await lease.acquire():
                try:
                    await task()
                finally:
                    with contextlib.suppress(RedisError, OSError):
                        await lease.release()
            if failing:
                logger.info("job %s: running again", name)
                failing = False
        except asyncio.CancelledError:
            raise
        except Exception:
            if not failing:
                logger.exception("job %s failed; retrying every %.1f s", name, interval)
                failing = True
        await asyncio.sleep(interval)
