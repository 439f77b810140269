"""Every Redis store raises StoreUnavailable when Redis cannot be reached, with the cause chained.

No mock: the stores talk to a real port on 127.0.0.1 where nothing listens. Callers answer 503
(HTTP) or ``temporary=True`` (WebSocket) for any StoreUnavailable, BackplaneUnavailable included.
"""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

import tidings.server.errors as errors_module
from loadtest.processes import free_port
from tidings.server.cluster import backplane
from tidings.server.cluster.lease import RedisLease
from tidings.server.cluster.presence import Member
from tidings.server.cluster.presence_redis import RedisPresence
from tidings.server.cluster.redis_errors import redis_errors
from tidings.server.cluster.rooms_redis import RedisRooms
from tidings.server.config import ConfigError
from tidings.server.errors import BackplaneUnavailable, StoreUnavailable, TidingsError
from tidings.server.gateway.auth import AuthError
from tidings.server.gateway.protocol import ProtocolError
from tidings.server.http.routes import ApiError
from tidings.server.jobs.queue import Job
from tidings.server.jobs.queue_redis import RedisJobQueue
from tidings.server.notify.store_redis import RedisNotificationStore

SERVER = Path(__file__).resolve().parent.parent / "server"


@pytest.fixture
async def down() -> AsyncIterator[aioredis.Redis]:
    """A client of a Redis that is not there: a free port on 127.0.0.1, nothing listening."""
    # No retries: redis-py would otherwise back off for seconds before giving up (the stores don't retry).
    client = aioredis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )
    try:
        yield client
    finally:
        await client.aclose()


JOB = Job("j1", "notify", {}, entry="1-0")
MEMBER = Member("alice", "c1", "n1")

Call = Callable[[aioredis.Redis], Awaitable[Any]]


def _presence(client: aioredis.Redis) -> RedisPresence:
    return RedisPresence(client, key_prefix="t", incarnation="n1~x")


def _rooms(client: aioredis.Redis) -> RedisRooms:
    return RedisRooms(client, key_prefix="t")


def _inbox(client: aioredis.Redis) -> RedisNotificationStore:
    return RedisNotificationStore(client, key_prefix="t")


def _jobs(client: aioredis.Redis) -> RedisJobQueue:
    return RedisJobQueue(client, key_prefix="t")


def _lease(client: aioredis.Redis) -> RedisLease:
    return RedisLease(client, "t:lease", ttl=1.0)


CALLS: dict[str, Call] = {
    "presence.add": lambda c: _presence(c).add("room:a", MEMBER),
    "presence.remove": lambda c: _presence(c).remove("room:a", MEMBER),
    "presence.members": lambda c: _presence(c).members("room:a"),
    "presence.remove_node": lambda c: _presence(c).remove_node("n2~y"),
    "rooms.create": lambda c: _rooms(c).create("r", private=True),
    "rooms.add_member": lambda c: _rooms(c).add_member("r", "alice"),
    "rooms.remove_member": lambda c: _rooms(c).remove_member("r", "alice"),
    "rooms.is_private": lambda c: _rooms(c).is_private("r"),
    "rooms.is_member": lambda c: _rooms(c).is_member("r", "alice"),
    "inbox.add": lambda c: _inbox(c).add(["alice"], "n1", "{}"),
    "inbox.page": lambda c: _inbox(c).page("alice", unread_only=False, limit=10, before=None),
    "inbox.mark_read": lambda c: _inbox(c).mark_read("alice", ["n1"]),
    "inbox.mark_all_read": lambda c: _inbox(c).mark_all_read("alice"),
    "inbox.check_in": lambda c: _inbox(c).check_in("alice"),
    "topics.subscribe": lambda c: _inbox(c).subscribe("t", "alice"),
    "topics.unsubscribe": lambda c: _inbox(c).unsubscribe("t", "alice"),
    "topics.audience_size": lambda c: _inbox(c).audience_size("t"),
    "topics.scan_audience": lambda c: _inbox(c).scan_audience("t", "0", 10),
    "dedupe.claim": lambda c: _inbox(c).claim_dedupe("k", {}, ttl=1.0),
    "dedupe.save": lambda c: _inbox(c).save_dedupe("k", {}, ttl=1.0),
    "jobs.enqueue": lambda c: _jobs(c).enqueue("notify", {}),
    "jobs.take": lambda c: _jobs(c).take("n1", 1, block=0.01),
    "jobs.reclaim": lambda c: _jobs(c).reclaim("n1", min_idle=1.0, count=1, max_deliveries=3),
    "jobs.touch": lambda c: _jobs(c).touch(JOB, "n1"),
    "jobs.complete": lambda c: _jobs(c).complete(JOB),
    "jobs.retry": lambda c: _jobs(c).retry(JOB, "boom", run_at=0.0),
    "jobs.bury": lambda c: _jobs(c).bury(JOB, "boom"),
    "jobs.release": lambda c: _jobs(c).release(JOB),
    "jobs.promote": lambda c: _jobs(c).promote(),
    "jobs.counts": lambda c: _jobs(c).counts(),
    "jobs.dead_letters": lambda c: _jobs(c).dead_letters(),
    "jobs.load_progress": lambda c: _jobs(c).load_progress("j1"),
    "jobs.save_progress": lambda c: _jobs(c).save_progress("j1", "0"),
    "lease.acquire": lambda c: _lease(c).acquire(),
    "lease.renew": lambda c: _lease(c).renew(),
    "lease.release": lambda c: _lease(c).release(),
}


@pytest.mark.parametrize("operation", sorted(CALLS))
async def test_every_redis_store_operation_raises_store_unavailable(
    operation: str, down: aioredis.Redis
) -> None:
    """With Redis unreachable, the operation raises StoreUnavailable (never a raw Redis error), cause chained."""
    with pytest.raises(StoreUnavailable) as raised:
        await CALLS[operation](down)
    assert isinstance(raised.value.__cause__, RedisError | OSError)


def test_redis_errors_turns_redis_and_socket_errors_into_store_unavailable() -> None:
    """The helper converts RedisError and OSError, chains the cause, and lets other errors through."""
    for error in (RedisError("x"), ConnectionResetError("y")):
        with (
            pytest.raises(StoreUnavailable, match="inbox read failed") as raised,
            redis_errors("inbox read failed"),
        ):
            raise error
        assert raised.value.__cause__ is error
    with pytest.raises(KeyError), redis_errors("never"):
        raise KeyError("not a Redis error")


def test_backplane_unavailable_is_a_store_unavailable_under_both_names() -> None:
    """`except StoreUnavailable` catches a backplane failure; the backplane package re-exports the same class."""
    assert issubclass(BackplaneUnavailable, StoreUnavailable)
    assert issubclass(StoreUnavailable, TidingsError)
    assert backplane.BackplaneUnavailable is BackplaneUnavailable


def test_errors_module_lists_every_exception_of_the_server() -> None:
    """Every exception class defined under server/ is named in errors.py's docstring; the node's own derive from TidingsError."""
    docstring = errors_module.__doc__ or ""
    defined: dict[str, str] = {}
    for path in sorted(SERVER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and (base.id.endswith(("Error", "Exception", "Unavailable")))
                for base in node.bases
            ):
                defined[node.name] = str(path.relative_to(SERVER))
    assert {"StoreUnavailable", "BackplaneUnavailable", "ProtocolError", "AuthError"} <= set(defined)
    missing = sorted(f"{name} ({where})" for name, where in defined.items() if name not in docstring)
    assert not missing, f"errors.py does not list: {missing}"
    for error in (ProtocolError, AuthError, ConfigError, ApiError, StoreUnavailable):
        assert issubclass(error, TidingsError), error
