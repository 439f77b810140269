"""A connect that fails half way leaves the connection able to connect again (issue 13, item 7)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from .support.node import run_node
from .support.node import test_settings as node_settings
from .test_gateway import make_token, raw_client

pytestmark = pytest.mark.redis


async def test_a_connect_that_failed_on_the_backplane_can_be_sent_again(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    """Redis stalls writes during connect: 503 temporary; once it is back, connect again succeeds."""
    async with (
        run_node(node_settings(redis_url=redis_url, key_prefix=key_prefix, connect_timeout=10.0)) as node,
        raw_client(node) as client,
    ):
        # Longer than the node's 2 s Redis timeout: the connect fails after its session opened.
        await redis_client.execute_command("CLIENT", "PAUSE", 4000, "WRITE")
        try:
            failed = await client.call("connect", token=make_token("alice"))
        finally:
            await redis_client.execute_command("CLIENT", "UNPAUSE")
        assert failed["error"]["code"] == 503 and failed["error"]["temporary"] is True
        again = await client.call("connect", token=make_token("alice"))
        assert again["result"]["user"] == "alice" and "user:alice" in again["result"]["channels"]
        assert "result" in await client.call("subscribe", channel="room:after")
