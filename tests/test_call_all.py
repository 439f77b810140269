"""``Commands.call_all``: several commands queued at once without a task each (issue 16), on one
Redis server and on a Redis Cluster, the pure waiting it rests on (``replies_of``), and how the
RESP layer fails the replies a lost connection leaves behind."""

from __future__ import annotations

import asyncio
import gc

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from tidings.server.cluster.backplane.pipeline import replies_of
from tidings.server.cluster.backplane.redis import RedisBackplane

from .support.backends import Backend
from .support.timing import wait_until
from .test_backplane_contract import Recorder

pytestmark = pytest.mark.redis


async def test_call_all_runs_every_command_and_answers_in_order(backend: Backend, key_prefix: str) -> None:
    backplane = RedisBackplane(backend.url, node_id="n1", key_prefix=key_prefix)
    await backplane.start(Recorder())
    a, b = f"{key_prefix}:{{a}}:x", f"{key_prefix}:{{b}}:y"  # on a cluster, two slots
    try:
        replies = await backplane.commands.call_all([("SET", a, "1"), ("GET", a), ("INCR", b), ("INCR", b)])
        assert replies[1:] == [b"1", 1, 2] and replies[0] in (True, b"OK")
    finally:
        await backplane.close()


async def test_call_all_raises_the_first_error_after_every_reply(backend: Backend, key_prefix: str) -> None:
    """An error in the middle: the commands after it still ran, and that error is raised."""
    backplane = RedisBackplane(backend.url, node_id="n1", key_prefix=key_prefix)
    await backplane.start(Recorder())
    key = f"{key_prefix}:{{e}}:k"
    try:
        with pytest.raises(ResponseError):
            await backplane.commands.call_all([("SET", key, "text"), ("INCR", key), ("APPEND", key, "!")])
        assert await backplane.commands.call("GET", key) == b"text!"
    finally:
        await backplane.close()


async def test_replies_of_waits_for_all_and_raises_the_first_error_in_order() -> None:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    waiting = asyncio.ensure_future(replies_of(futures))
    futures[2].set_exception(ValueError("third"))
    futures[1].set_exception(KeyError("second"))
    await asyncio.sleep(0)
    assert not waiting.done()  # the first is not in yet
    futures[0].set_result("first")
    with pytest.raises(KeyError):
        await waiting


async def test_replies_of_cancelled_cancels_what_is_not_done() -> None:
    """A caller that goes away takes its queued commands with it (a pipeline skips cancelled ones)."""
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    futures[0].set_result(0)
    waiting = asyncio.ensure_future(replies_of(futures))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert futures[0].result() == 0 and futures[1].cancelled() and futures[2].cancelled()


async def test_replies_abandoned_on_a_lost_connection_are_not_logged_as_lost(redis_url: str) -> None:
    """A round trip given up (timed out, cancelled) leaves futures nobody awaits; when the connection
    then drops, they fail quietly: no "Future exception was never retrieved" when collected."""
    from urllib.parse import urlparse

    from tidings.server.cluster.backplane.resp import Endpoint, open_resp

    from .support.logs import error_log

    url = urlparse(redis_url)
    connection = await open_resp(Endpoint(address=(url.hostname or "", url.port or 6379)), timeout=5.0)
    with error_log() as errors:
        pending = connection.send([("BLPOP", "tidings-test:never", "0"), ("PING",)])  # blocks: no reply
        connection.abort()
        await wait_until(lambda: all(f.done() for f in pending))
        waited = pending[0]
        pending.clear()  # the PING's future: nobody will ever await it
        gc.collect()
        with pytest.raises(RedisConnectionError):
            await waited  # who still waits gets the error
        del waited
        gc.collect()
        assert not errors.records, errors.messages()
