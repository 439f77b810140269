"""Work that exactly one node of the cluster must do at a time: leases, and periodic work under one.

A :class:`Lease` is a cluster-wide mutual exclusion with a TTL. :class:`RedisLease`
is a Redis key taken with ``SET NX PX`` and a random token, renewed while held,
released only by its holder (compare and delete in Lua); :class:`LocalLease` is the
single-node stand-in, always held. :func:`run_once_periodically` runs a task every
``interval`` on whichever node holds the lease at that moment, so a periodic job
(the dead-node sweep of liveness.py, moving due scheduled jobs) runs once per tick
across the cluster and moves to another node within one lease TTL when its node dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Protocol

from tidings.server.cluster.redis_client import StoreClient
from tidings.server.cluster.redis_errors import redis_errors
from tidings.server.errors import StoreUnavailable

__all__ = ["Lease", "LocalLease", "RedisLease", "run_once_periodically"]

logger = logging.getLogger("tidings.jobs")


class Lease(Protocol):
    """A cluster-wide mutual exclusion with a TTL: at most one holder at a time.

    Guarantee: while ``acquire`` returned True and less than ``ttl`` has passed
    (or the last ``renew`` succeeded), no other node holds it. A holder that dies
    loses it after ``ttl``. Errors raise StoreUnavailable.
    """

    key: str
    ttl: float

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; whether this holder has it now."""

    async def renew(self) -> bool:
        """Extend the lease by ``ttl``; False if this holder lost it meanwhile."""

    async def release(self) -> None:
        """Let go of the lease, if this holder still has it."""


class LocalLease:
    """The single-node stand-in for :class:`RedisLease`: the only node always holds it."""

    def __init__(self, key: str = "local", *, ttl: float = 1.0) -> None:
        self.key = key
        self.ttl = ttl

    async def acquire(self) -> bool:
        return True

    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        return None


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


class RedisLease:
    """The :class:`Lease` contract on a Redis key holding a random token (see the module docstring)."""

    def __init__(self, client: StoreClient, key: str, *, ttl: float) -> None:
        self._redis = client
        self.key = key
        self.ttl = ttl
        self._token = secrets.token_hex(8)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    async def acquire(self) -> bool:
        with redis_errors("lease acquire failed"):
            return bool(await self._redis.set(self.key, self._token, nx=True, px=int(self.ttl * 1000)))

    async def renew(self) -> bool:
        with redis_errors("lease renew failed"):
            return bool(await self._renew(keys=[self.key], args=[self._token, int(self.ttl * 1000)]))

    async def release(self) -> None:
        with redis_errors("lease release failed"):
            await self._release(keys=[self.key], args=[self._token])


async def run_once_periodically(
    lease: Lease, interval: float, task: Callable[[], Awaitable[None]], *, name: str
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
                    # Not released: it expires after its TTL, and someone runs the next tick.
                    with contextlib.suppress(StoreUnavailable):
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
