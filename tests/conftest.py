"""Shared fixtures. Real servers only: uvicorn on free ports, Valkey/Redis processes, real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tidings.server.gateway.auth import issue_token

from .support.backends import backend, backend_client
from .support.node import SECRET, RunningNode, run_node, test_settings
from .support.redis_server import key_prefix, redis_client, redis_url
from .support.redis_topologies import fresh_cluster, fresh_sentinel, redis_cluster, topology_binary

__all__ = [  # fixtures shared by every test module
    "backend",
    "backend_client",
    "fresh_cluster",
    "fresh_sentinel",
    "key_prefix",
    "redis_client",
    "redis_cluster",
    "redis_url",
    "topology_binary",
]


@pytest.fixture
async def node() -> AsyncIterator[RunningNode]:
    """One node with the in-memory backplane."""
    async with run_node(test_settings()) as running:
        yield running


@pytest.fixture
def token():  # type: ignore[no-untyped-def]
    """Make a valid token: ``token("alice")``."""

    def make(user: str, *, ttl: float = 3600.0) -> str:
        return issue_token(user, SECRET, ttl=ttl)

    return make
