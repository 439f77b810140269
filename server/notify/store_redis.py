"""Notifications in Redis: the cluster :class:`~tidings.server.notify.store.NotificationStore`.

Layout (keys.py): per user, an ``inbox`` sorted set (id → sequence number), an
``unread`` sorted set (the unread subset, same scores), a hash of the
notifications' JSON and a sequence counter — all tagged ``{user:<id>}``, so one
Lua script changes an inbox and its unread count together, also on Redis
Cluster. Per topic a set of subscribers; one set of every known user (the
audience of ``all``); one key per dedupe record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.backplane.pipeline import Commands
from tidings.server.cluster.redis_client import StoreClient
from tidings.server.cluster.redis_errors import redis_errors
from tidings.server.notify.store import InboxPage

__all__ = ["RedisNotificationStore"]

# KEYS[1] inbox order zset, KEYS[2] unread zset, KEYS[3] items hash, KEYS[4] sequence counter;
# ARGV[1] notification id, ARGV[2] its JSON, ARGV[3] inbox size, ARGV[4] inbox TTL (ms).
# Returns the unread count after the add, or -1 if the inbox already holds the id (idempotent re-run).
_ADD = """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return -1 end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
while excess > 0 do  -- usually 1; in chunks, since unpack() has a limit (after TIDINGS_INBOX_SIZE shrank)
  local oldest = redis.call('ZRANGE', KEYS[1], 0, math.min(excess, 1000) - 1)
  redis.call('ZREM', KEYS[1], unpack(oldest))
  redis.call('ZREM', KEYS[2], unpack(oldest))
  redis.call('HDEL', KEYS[3], unpack(oldest))
  excess = excess - #oldest
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return redis.call('ZCARD', KEYS[2])
"""

# KEYS[1] inbox order zset, KEYS[2] unread zset, KEYS[3] items hash;
# ARGV[1] before (an id, or ""), ARGV[2] limit, ARGV[3] "1" for unread only.
# Returns {items, read flags (1 read, 0 unread), unread count}, newest first, from one snapshot.
_PAGE = """
local source = KEYS[1]
if ARGV[3] == '1' then source = KEYS[2] end
local max = '+inf'
if ARGV[1] ~= '' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not score then return {{}, {}, redis.call('ZCARD', KEYS[2])} end
  max = '(' .. score
end
local ids = redis.call('ZREVRANGEBYSCORE', source, max, '-inf', 'LIMIT', 0, tonumber(ARGV[2]))
local items, read = {}, {}
if #ids > 0 then
  local values = redis.call('HMGET', KEYS[3], unpack(ids))
  for i, id in ipairs(ids) do
    if values[i] then
      table.insert(items, values[i])
      table.insert(read, redis.call('ZSCORE', KEYS[2], id) and 0 or 1)
    end
  end
end
return {items, read, redis.call('ZCARD', KEYS[2])}
"""

# KEYS[1] unread zset; ARGV ids to mark read. Returns the unread count after.
_READ = """
redis.call('ZREM', KEYS[1], unpack(ARGV))
return redis.call('ZCARD', KEYS[1])
"""


class RedisNotificationStore:
    """The NotificationStore contract in Redis (layout in the module docstring)."""

    def __init__(
        self,
        client: StoreClient,
        *,
        key_prefix: str,
        inbox_size: int = 1000,
        inbox_ttl: float = 30 * 86400.0,
        commands: Commands | None = None,
    ) -> None:
        self._redis = client
        self._commands = commands  # the node's pipelined commands, for check_in (every connect)
        self._prefix = key_prefix
        self.inbox_size = inbox_size
        self.inbox_ttl = inbox_ttl
        self._add = client.register_script(_ADD)
        self._page = client.register_script(_PAGE)
        self._read = client.register_script(_READ)

    def _inbox_keys(self, user: str) -> list[str]:
        p = self._prefix
        return [
            redis_keys.inbox_order(p, user),
            redis_keys.inbox_unread(p, user),
            redis_keys.inbox_items(p, user),
            redis_keys.inbox_seq(p, user),
        ]

    def _audience_key(self, topic: str | None) -> str:
        if topic is None:
            return redis_keys.users(self._prefix)
        return redis_keys.topic_subscribers(self._prefix, topic)

    async def add(self, users: Sequence[str], notification_id: str, encoded: str) -> list[int | None]:
        if not users:
            return []
        ttl_ms = int(self.inbox_ttl * 1000)
        with redis_errors("inbox add failed"):
            # One script per inbox (each inbox is its own slot), pipelined: one round trip per batch
            # (per shard on a cluster). EVALSHA by name: redis-py's cluster pipeline refuses script
            # objects, and the few calls that find the script missing (a restarted server) run again.
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in users:
                    args = (notification_id, encoded, self.inbox_size, ttl_ms)
                    pipe.execute_command("EVALSHA", self._add.sha, 4, *self._inbox_keys(user), *args)
                pipe.sadd(redis_keys.users(self._prefix), *users)
                results = await pipe.execute(raise_on_error=False)
            for i, result in enumerate(results[: len(users)]):
                if isinstance(result, NoScriptError):
                    results[i] = await self._add(
                        keys=self._inbox_keys(users[i]),
                        args=[notification_id, encoded, self.inbox_size, ttl_ms],
                    )
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return [None if int(n) < 0 else int(n) for n in results[: len(users)]]

    async def page(self, user: str, *, unread_only: bool, limit: int, before: str | None) -> InboxPage:
        with redis_errors("inbox read failed"):
            items, read, unread = await self._page(
                keys=self._inbox_keys(user)[:3], args=[before or "", limit, "1" if unread_only else "0"]
            )
        return InboxPage([(_text(i), bool(r)) for i, r in zip(items, read, strict=True)], int(unread))

    async def mark_read(self, user: str, ids: Sequence[str]) -> int:
        unread_key = redis_keys.inbox_unread(self._prefix, user)
        with redis_errors("mark read failed"):
            if not ids:
                return int(await self._redis.zcard(unread_key))
            return int(await self._read(keys=[unread_key], args=list(ids)))

    async def mark_all_read(self, user: str) -> int:
        with redis_errors("mark read failed"):
            await self._redis.delete(redis_keys.inbox_unread(self._prefix, user))
        return 0

    async def check_in(self, user: str) -> int:
        if self._commands is not None:  # shares a round trip with the other connects of this loop turn
            with redis_errors("inbox read failed"):
                _, unread = await self._commands.call_all(
                    [
                        ("SADD", redis_keys.users(self._prefix), user),
                        ("ZCARD", redis_keys.inbox_unread(self._prefix, user)),
                    ]
                )
            return int(unread)
        with redis_errors("inbox read failed"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(redis_keys.users(self._prefix), user)
                pipe.zcard(redis_keys.inbox_unread(self._prefix, user))
                _, unread = await pipe.execute()
        return int(unread)

    async def subscribe(self, topic: str, user: str) -> None:
        with redis_errors("topic subscribe failed"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(self._audience_key(topic), user)
                pipe.sadd(redis_keys.users(self._prefix), user)
                await pipe.execute()

    async def unsubscribe(self, topic: str, user: str) -> None:
        with redis_errors("topic unsubscribe failed"):
            await self._redis.srem(self._audience_key(topic), user)

    async def audience_size(self, topic: str | None) -> int:
        with redis_errors("topic read failed"):
            return int(await self._redis.scard(self._audience_key(topic)))

    async def scan_audience(self, topic: str | None, cursor: str, count: int) -> tuple[str, list[str]]:
        with redis_errors("topic read failed"):
            next_cursor, members = await self._redis.sscan(
                self._audience_key(topic), int(cursor), count=count
            )
        return str(int(next_cursor)), [_text(m) for m in members]

    async def claim_dedupe(self, key: str, record: dict[str, Any], *, ttl: float) -> dict[str, Any] | None:
        with redis_errors("dedupe check failed"):
            # SET NX GET (Redis 7): set it, or get the record already there, in one step.
            existing: Any = await self._redis.set(
                redis_keys.notification_dedupe(self._prefix, key),
                json.dumps(record),
                nx=True,
                get=True,
                px=int(ttl * 1000),
            )
        return None if existing is None else dict(json.loads(existing))

    async def save_dedupe(self, key: str, record: dict[str, Any], *, ttl: float) -> None:
        with redis_errors("dedupe save failed"):
            await self._redis.set(
                redis_keys.notification_dedupe(self._prefix, key), json.dumps(record), px=int(ttl * 1000)
            )


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
