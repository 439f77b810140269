"""Where notifications live: inboxes with read state, topic subscribers, known users, dedupe records.

Two implementations share one contract (tests/test_notifications.py runs over
both): :class:`InMemoryNotificationStore` for a single node and
:class:`RedisNotificationStore` for a cluster. The store deals in notification
ids and their JSON; notifications.py gives them meaning.

Redis layout (keys.py): per user, an ``inbox`` sorted set (id → sequence
number), an ``unread`` sorted set (the unread subset, same scores), a hash of
the notifications' JSON and a sequence counter — all tagged ``{user:<id>}``, so
one Lua script changes an inbox and its unread count together, also on Redis
Cluster. Per topic a set of subscribers; one set of every known user (the
audience of ``all``); one key per dedupe record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tidings.server.cluster.backplane import BackplaneUnavailable
from tidings.server.cluster.backplane import keys as redis_keys

__all__ = [
    "InMemoryNotificationStore",
    "InboxPage",
    "NotificationStore",
    "RedisNotificationStore",
]

SCAN_DONE = "0"  # the cursor that starts and ends a scan (as Redis SSCAN)


@dataclass(frozen=True, slots=True)
class InboxPage:
    """Notifications of one inbox, newest first, as ``(json, read)``, and the inbox's unread count."""

    items: list[tuple[str, bool]]
    unread: int


class NotificationStore(Protocol):
    """Inboxes, read state, topics, known users and dedupe records.

    Guarantees:
      * ``add`` is idempotent per (user, notification id): adding an id the inbox
        already holds changes nothing and reports None for that user. (An id
        dropped from a full inbox, or from an expired one, could be added again.)
      * the unread count always equals the number of unread notifications in the
        inbox: both change in one atomic step.
      * an inbox holds at most ``inbox_size`` notifications (the oldest go first)
        and disappears ``inbox_ttl`` seconds after the last notification was added.
      * ``scan_audience`` returns every user who belongs to the audience for the
        whole scan at least once (maybe more than once: callers dedupe by ``add``).
    Errors raise BackplaneUnavailable.
    """

    async def add(self, users: Sequence[str], notification_id: str, encoded: str) -> list[int | None]:
        """Put a notification (unread) into each user's inbox.

        Returns:
            per user, the unread count after the add, or None if the inbox already had it.
        """

    async def page(self, user: str, *, unread_only: bool, limit: int, before: str | None) -> InboxPage:
        """Up to ``limit`` notifications older than ``before`` (an id; None: the newest), newest first."""

    async def mark_read(self, user: str, ids: Sequence[str]) -> int:
        """Mark ``ids`` read (unknown ids are ignored); return the unread count."""

    async def mark_all_read(self, user: str) -> int:
        """Mark the whole inbox read; return the unread count (0)."""

    async def check_in(self, user: str) -> int:
        """Remember ``user`` as known (audience of ``all``) and return its unread count."""

    async def subscribe(self, topic: str, user: str) -> None: ...

    async def unsubscribe(self, topic: str, user: str) -> None: ...

    async def audience_size(self, topic: str | None) -> int:
        """How many users ``topic`` has (None: every known user)."""

    async def scan_audience(self, topic: str | None, cursor: str, count: int) -> tuple[str, list[str]]:
        """About ``count`` users of the audience from ``cursor`` ("0" to start); the next cursor is "0" at the end."""

    async def claim_dedupe(self, key: str, record: dict[str, Any], *, ttl: float) -> dict[str, Any] | None:
        """Store ``record`` under ``key`` unless a record is there; return that existing record, or None."""

    async def save_dedupe(self, key: str, record: dict[str, Any], *, ttl: float) -> None: ...


# --- memory -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Inbox:
    order: dict[str, int] = field(default_factory=dict)  # id → sequence number, oldest first
    unread: set[str] = field(default_factory=set)
    items: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    changed: float = 0.0


class InMemoryNotificationStore:
    """The NotificationStore contract within one process."""

    def __init__(
        self,
        *,
        inbox_size: int = 1000,
        inbox_ttl: float = 30 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inbox_size = inbox_size
        self.inbox_ttl = inbox_ttl
        self._clock = clock
        self._inboxes: dict[str, _Inbox] = {}
        self._topics: dict[str, set[str]] = {}
        self._users: set[str] = set()
        self._dedupe: dict[str, tuple[dict[str, Any], float]] = {}

    def _inbox(self, user: str, *, create: bool = False) -> _Inbox:
        """The user's inbox; an empty one that is not kept unless ``create`` (reads store nothing)."""
        inbox = self._inboxes.get(user)
        if inbox is not None and self._clock() - inbox.changed > self.inbox_ttl:
            del self._inboxes[user]  # expired, like the Redis keys
            inbox = None
        if inbox is None:
            inbox = _Inbox()
            if create:
                self._inboxes[user] = inbox
        return inbox

    async def add(self, users: Sequence[str], notification_id: str, encoded: str) -> list[int | None]:
        results: list[int | None] = []
        for user in users:
            self._users.add(user)
            inbox = self._inbox(user, create=True)
            if notification_id in inbox.items:
                results.append(None)
                continue
            inbox.seq += 1
            inbox.order[notification_id] = inbox.seq
            inbox.unread.add(notification_id)
            inbox.items[notification_id] = encoded
            while len(inbox.order) > self.inbox_size:
                oldest = next(iter(inbox.order))
                del inbox.order[oldest], inbox.items[oldest]
                inbox.unread.discard(oldest)
            inbox.changed = self._clock()
            results.append(len(inbox.unread))
        return results

    async def page(self, user: str, *, unread_only: bool, limit: int, before: str | None) -> InboxPage:
        inbox = self._inbox(user)
        if before is not None and before not in inbox.order:
            return InboxPage([], len(inbox.unread))
        ids = [
            i
            for i in reversed(inbox.order)
            if (before is None or inbox.order[i] < inbox.order[before])
            and (not unread_only or i in inbox.unread)
        ]
        return InboxPage([(inbox.items[i], i not in inbox.unread) for i in ids[:limit]], len(inbox.unread))

    async def mark_read(self, user: str, ids: Sequence[str]) -> int:
        inbox = self._inbox(user)
        inbox.unread.difference_update(ids)
        return len(inbox.unread)

    async def mark_all_read(self, user: str) -> int:
        self._inbox(user).unread.clear()
        return 0

    async def check_in(self, user: str) -> int:
        self._users.add(user)
        return len(self._inbox(user).unread)

    async def subscribe(self, topic: str, user: str) -> None:
        self._users.add(user)
        self._topics.setdefault(topic, set()).add(user)

    async def unsubscribe(self, topic: str, user: str) -> None:
        subscribers = self._topics.get(topic)
        if subscribers is not None:
            subscribers.discard(user)
            if not subscribers:
                del self._topics[topic]

    def _audience(self, topic: str | None) -> set[str]:
        return self._users if topic is None else self._topics.get(topic, set())

    async def audience_size(self, topic: str | None) -> int:
        return len(self._audience(topic))

    async def scan_audience(self, topic: str | None, cursor: str, count: int) -> tuple[str, list[str]]:
        # The cursor is the last user returned ("u:<id>"): users present throughout come exactly once.
        after = cursor[2:] if cursor.startswith("u:") else None
        members = sorted(u for u in self._audience(topic) if after is None or u > after)
        batch = members[:count]
        return (f"u:{batch[-1]}" if len(members) > count else SCAN_DONE), batch

    async def claim_dedupe(self, key: str, record: dict[str, Any], *, ttl: float) -> dict[str, Any] | None:
        existing = self._dedupe.get(key)
        if existing is not None and existing[1] > self._clock():
            return dict(existing[0])
        self._dedupe[key] = (dict(record), self._clock() + ttl)
        return None

    async def save_dedupe(self, key: str, record: dict[str, Any], *, ttl: float) -> None:
        self._dedupe[key] = (dict(record), self._clock() + ttl)
        if len(self._dedupe) > 10_000:  # bound memory: forget expired records now and then
            now = self._clock()
            self._dedupe = {k: v for k, v in self._dedupe.items() if v[1] > now}


# --- Redis ------------------------------------------------------------------------------------------

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
        client: aioredis.Redis,
        *,
        key_prefix: str,
        inbox_size: int = 1000,
        inbox_ttl: float = 30 * 86400.0,
    ) -> None:
        self._redis = client
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
        try:
            # One script per inbox (each inbox is its own slot), pipelined: one round trip per batch.
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in users:
                    await self._add(
                        keys=self._inbox_keys(user),
                        args=[notification_id, encoded, self.inbox_size, ttl_ms],
                        client=pipe,
                    )
                pipe.sadd(redis_keys.users(self._prefix), *users)
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("inbox add failed") from exc
        return [None if int(n) < 0 else int(n) for n in results[: len(users)]]

    async def page(self, user: str, *, unread_only: bool, limit: int, before: str | None) -> InboxPage:
        try:
            items, read, unread = await self._page(
                keys=self._inbox_keys(user)[:3], args=[before or "", limit, "1" if unread_only else "0"]
            )
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("inbox read failed") from exc
        return InboxPage([(_text(i), bool(r)) for i, r in zip(items, read, strict=True)], int(unread))

    async def mark_read(self, user: str, ids: Sequence[str]) -> int:
        unread_key = redis_keys.inbox_unread(self._prefix, user)
        try:
            if not ids:
                return int(await self._redis.zcard(unread_key))
            return int(await self._read(keys=[unread_key], args=list(ids)))
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("mark read failed") from exc

    async def mark_all_read(self, user: str) -> int:
        try:
            await self._redis.delete(redis_keys.inbox_unread(self._prefix, user))
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("mark read failed") from exc
        return 0

    async def check_in(self, user: str) -> int:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(redis_keys.users(self._prefix), user)
                pipe.zcard(redis_keys.inbox_unread(self._prefix, user))
                _, unread = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("inbox read failed") from exc
        return int(unread)

    async def subscribe(self, topic: str, user: str) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(self._audience_key(topic), user)
                pipe.sadd(redis_keys.users(self._prefix), user)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("topic subscribe failed") from exc

    async def unsubscribe(self, topic: str, user: str) -> None:
        try:
            await self._redis.srem(self._audience_key(topic), user)
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("topic unsubscribe failed") from exc

    async def audience_size(self, topic: str | None) -> int:
        try:
            return int(await self._redis.scard(self._audience_key(topic)))
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("topic read failed") from exc

    async def scan_audience(self, topic: str | None, cursor: str, count: int) -> tuple[str, list[str]]:
        try:
            next_cursor, members = await self._redis.sscan(
                self._audience_key(topic), int(cursor), count=count
            )
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("topic read failed") from exc
        return str(int(next_cursor)), [_text(m) for m in members]

    async def claim_dedupe(self, key: str, record: dict[str, Any], *, ttl: float) -> dict[str, Any] | None:
        try:
            # SET NX GET (Redis 7): set it, or get the record already there, in one step.
            existing: Any = await self._redis.set(
                redis_keys.notification_dedupe(self._prefix, key),
                json.dumps(record),
                nx=True,
                get=True,
                px=int(ttl * 1000),
            )
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("dedupe check failed") from exc
        return None if existing is None else dict(json.loads(existing))

    async def save_dedupe(self, key: str, record: dict[str, Any], *, ttl: float) -> None:
        try:
            await self._redis.set(
                redis_keys.notification_dedupe(self._prefix, key), json.dumps(record), px=int(ttl * 1000)
            )
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("dedupe save failed") from exc


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
