"""Notifications within one process: the single-node :class:`~tidings.server.notify.store.NotificationStore`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidings.server.notify.store import SCAN_DONE, InboxPage

__all__ = ["InMemoryNotificationStore"]


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
