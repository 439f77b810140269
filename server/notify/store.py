"""Where notifications live: inboxes with read state, topic subscribers, known users, dedupe records.

The contract, split by who uses it: an :class:`InboxStore` (the notifier adds to
inboxes and reads them for the HTTP API and connects), a :class:`TopicStore`
(topic subscriptions, over HTTP and by the emitter; the fan-out scans a topic's
audience) and a :class:`DedupeStore` (repeated notify requests).
:class:`NotificationStore` is all three, as both implementations provide it:
:class:`~tidings.server.notify.store_memory.InMemoryNotificationStore` for a single
node and :class:`~tidings.server.notify.store_redis.RedisNotificationStore` for a
cluster (tests/test_notifications.py runs the contract over both). The store deals
in notification ids and their JSON; notifier.py gives them meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "SCAN_DONE",
    "DedupeStore",
    "InboxPage",
    "InboxStore",
    "NotificationStore",
    "TopicStore",
]

SCAN_DONE = "0"  # the cursor that starts and ends a scan (as Redis SSCAN)


@dataclass(frozen=True, slots=True)
class InboxPage:
    """Notifications of one inbox, newest first, as ``(json, read)``, and the inbox's unread count."""

    items: list[tuple[str, bool]]
    unread: int


class InboxStore(Protocol):
    """Each user's inbox: notifications, newest first, with read state.

    Guarantees:
      * ``add`` is idempotent per (user, notification id): adding an id the inbox
        already holds changes nothing and reports None for that user. (An id
        dropped from a full inbox, or from an expired one, could be added again.)
      * the unread count always equals the number of unread notifications in the
        inbox: both change in one atomic step.
      * an inbox holds at most ``inbox_size`` notifications (the oldest go first)
        and disappears ``inbox_ttl`` seconds after the last notification was added.
    Errors raise StoreUnavailable.
    """

    async def add(self, users: Sequence[str], notification_id: str, encoded: str) -> list[int | None]:
        """Put a notification (unread) into each user's inbox; every user becomes known (audience of ``all``).

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


class TopicStore(Protocol):
    """Who a notification to a topic, or to everyone, goes to.

    Guarantee: ``scan_audience`` returns every user who belongs to the audience for
    the whole scan at least once (maybe more than once: callers dedupe by ``add``).
    Errors raise StoreUnavailable.
    """

    async def subscribe(self, topic: str, user: str) -> None:
        """Add ``user`` to the topic's subscribers (it becomes known too: audience of ``all``)."""

    async def unsubscribe(self, topic: str, user: str) -> None: ...

    async def audience_size(self, topic: str | None) -> int:
        """How many users ``topic`` has (None: every known user)."""

    async def scan_audience(self, topic: str | None, cursor: str, count: int) -> tuple[str, list[str]]:
        """About ``count`` users of the audience from ``cursor`` ("0" to start); the next cursor is "0" at the end."""


class DedupeStore(Protocol):
    """Records of notify requests by their ``dedupe_key``, kept for ``ttl`` seconds. Errors raise StoreUnavailable."""

    async def claim_dedupe(self, key: str, record: dict[str, Any], *, ttl: float) -> dict[str, Any] | None:
        """Store ``record`` under ``key`` unless a record is there; return that existing record, or None."""

    async def save_dedupe(self, key: str, record: dict[str, Any], *, ttl: float) -> None: ...


class NotificationStore(InboxStore, TopicStore, DedupeStore, Protocol):
    """Inboxes, topics and dedupe records together: what the notifier needs, and each implementation is."""
