"""Notifications for users: durable inboxes, read state, topics, live pushes, fan-out as jobs.

The first half of this module is pure (the notification, request validation,
the pushes); :class:`Notifier` does the work over a NotificationStore
(store.py), the producer side of a JobQueue (jobs/queue.py) and the backplane, and
``node.start_node`` wires them into a node.

Delivery (DESIGN.md, Guarantees 5 and 6):
  * ``users``: the request returns once every inbox holds the notification.
  * ``topic`` and ``all``: the request returns once a fan-out job is enqueued;
    one node runs it, in batches, checkpointing its scan cursor, so 100,000
    subscribers never block a request and a job re-run after a crash resumes
    where it stopped. Adding to an inbox is idempotent per notification id, so a
    re-run never delivers twice.
  * ``deliver_at``: the request enqueues a job for that time (delayed set,
    promoted by one node); the job delivers as above.
  * A live ``notification`` push goes to ``user:<id>`` for each inbox that got
    the notification just now (never for a repeat), reaching every connection of
    the user on every node; marking read pushes the new ``unread`` count.
  * ``dedupe_key``: a request repeated with the same key within ``DEDUPE_TTL``
    returns the first result and notifies nobody again; if the first attempt
    failed halfway, the repeat finishes it under the same notification id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from tidings.server.channels import Channel, check_user
from tidings.server.cluster.backplane import Backplane, BackplaneUnavailable
from tidings.server.gateway.protocol import ProtocolError, check_data
from tidings.server.jobs.queue import Job, JobCheckpoints, JobProducer
from tidings.server.notify.store import SCAN_DONE, NotificationStore

if TYPE_CHECKING:
    pass

__all__ = [
    "MAX_DATA_SIZE",
    "MAX_USERS_PER_REQUEST",
    "NOTIFY_JOB",
    "SEVERITIES",
    "Audience",
    "FanOutJobs",
    "Notification",
    "Notifier",
    "NotifyRequest",
    "check_topic",
    "notification_push",
    "parse_notify_request",
    "parse_time",
    "unread_push",
]

logger = logging.getLogger("tidings.notifications")

SEVERITIES: Final = ("info", "success", "warn", "error", "fatal")
MAX_USERS_PER_REQUEST: Final = 1000  # a larger audience is a topic
MAX_DATA_SIZE: Final = 16 * 1024  # bytes of JSON
MAX_TITLE: Final = 200
MAX_BODY: Final = 4000
MAX_EPOCH_SECONDS: Final = 253402300799  # 9999-12-31T23:59:59Z, the last time ISO 8601 writes
MAX_SCHEDULE_AHEAD: Final = 366 * 86400.0  # seconds
DEDUPE_TTL: Final = 86400.0  # seconds a dedupe_key is remembered
NOTIFY_JOB: Final = "notify"

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.:@\-]{1,200}")


# --- the notification (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification as every recipient's inbox holds it; ``ts`` is milliseconds since the epoch."""

    id: str
    type: str
    severity: str
    title: str
    body: str
    data: Any
    ts: int

    def encode(self, *, read: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "severity": self.severity,
            "title": self.title,
            "body": self.body,
            "data": self.data,
            "ts": self.ts,
            "read": read,
        }

    def dumps(self) -> str:
        """The stored form (without ``read``: read state is kept per inbox)."""
        value = self.encode()
        del value["read"]
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def decode(cls, value: Mapping[str, Any]) -> Notification:
        return cls(
            str(value["id"]),
            str(value["type"]),
            str(value["severity"]),
            str(value["title"]),
            str(value.get("body", "")),
            value.get("data"),
            int(value["ts"]),
        )


def new_notification_id(now: float) -> str:
    """A unique id that sorts by creation time (hex milliseconds, then random)."""
    return f"{int(now * 1000):011x}{secrets.token_hex(5)}"


@dataclass(frozen=True, slots=True)
class Audience:
    """Who gets a notification: a list of users, a topic's subscribers, or every known user."""

    users: tuple[str, ...] = ()
    topic: str | None = None
    everyone: bool = False

    def encode(self) -> dict[str, Any]:
        if self.users:
            return {"users": list(self.users)}
        if self.topic is not None:
            return {"topic": self.topic}
        return {"all": True}

    @classmethod
    def decode(cls, value: Mapping[str, Any]) -> Audience:
        if value.get("users"):
            return cls(users=tuple(str(u) for u in value["users"]))
        if value.get("topic") is not None:
            return cls(topic=str(value["topic"]))
        return cls(everyone=True)


@dataclass(frozen=True, slots=True)
class NotifyRequest:
    """A checked ``POST /api/notifications`` body."""

    audience: Audience
    type: str
    severity: str
    title: str
    body: str = ""
    data: Any = None
    dedupe_key: str | None = None
    deliver_at: float | None = None  # epoch seconds


def check_topic(value: object) -> str:
    if not isinstance(value, str) or _NAME_RE.fullmatch(value) is None:
        raise ProtocolError("topic must be 1-200 letters, digits or _ . : @ -")
    return value


def parse_time(value: object, field_name: str = "deliver_at") -> float:
    """Epoch seconds from a number or an ISO 8601 string (a time without offset is UTC).

    Raises:
        ProtocolError: neither, or not a finite time.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Compared before float(): a 400-digit integer would raise OverflowError there. NaN fails too.
        if not 0 <= value <= MAX_EPOCH_SECONDS:
            raise ProtocolError(f"{field_name} must be epoch seconds from 0 to {MAX_EPOCH_SECONDS}")
        return float(value)
    if isinstance(value, str) and len(value) <= 64:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ProtocolError(f"{field_name} is not an ISO 8601 time") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    raise ProtocolError(f"{field_name} must be epoch seconds or an ISO 8601 time")


def _text(body: Mapping[str, Any], name: str, *, required: bool, limit: int, default: str = "") -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise ProtocolError(f"{name} is required")
        return default
    if not isinstance(value, str) or (required and not value.strip()):
        raise ProtocolError(f"{name} must be a non-empty string" if required else f"{name} must be a string")
    if len(value) > limit:
        raise ProtocolError(f"{name} is longer than {limit} characters")
    check_data(value)
    return value


def _audience(body: Mapping[str, Any], *, max_users: int) -> Audience:
    given = [name for name in ("users", "topic", "all") if body.get(name) not in (None, False)]
    if not given:
        raise ProtocolError("no recipients: give users, topic or all: true")
    if len(given) > 1:
        raise ProtocolError(f"give only one of users, topic and all (got {', '.join(given)})")
    if given == ["users"]:
        users = body["users"]
        if not isinstance(users, list) or not users:
            raise ProtocolError("users must be a non-empty list of user ids")
        if len(users) > max_users:
            raise ProtocolError(f"users holds {len(users)} users; at most {max_users} per call (use a topic)")
        return Audience(users=tuple(dict.fromkeys(check_user(u, "users[]") for u in users)))
    if given == ["topic"]:
        return Audience(topic=check_topic(body["topic"]))
    if body["all"] is not True:
        raise ProtocolError("all must be true")
    return Audience(everyone=True)


def parse_notify_request(
    body: Mapping[str, Any],
    *,
    now: float,
    max_users: int = MAX_USERS_PER_REQUEST,
    max_data_size: int = MAX_DATA_SIZE,
) -> NotifyRequest:
    """Check a ``POST /api/notifications`` body completely before anything is written.

    Raises:
        ProtocolError: 400, with a message naming the field at fault.
    """
    audience = _audience(body, max_users=max_users)
    severity = body.get("severity", "info")
    if severity not in SEVERITIES:
        raise ProtocolError(f"severity must be one of {', '.join(SEVERITIES)}")
    kind = body.get("type", "notification")
    if not isinstance(kind, str) or _NAME_RE.fullmatch(kind) is None:
        raise ProtocolError("type must be 1-200 letters, digits or _ . : @ -")
    data = body.get("data")
    check_data(data)
    if len(json.dumps(data, ensure_ascii=False).encode()) > max_data_size:
        raise ProtocolError(f"data is larger than {max_data_size} bytes of JSON")
    dedupe_key = body.get("dedupe_key")
    if dedupe_key is not None and (
        not isinstance(dedupe_key, str) or not 0 < len(dedupe_key) <= 200 or not dedupe_key.isprintable()
    ):
        raise ProtocolError("dedupe_key must be 1-200 printable characters")
    deliver_at = None
    if body.get("deliver_at") is not None:
        deliver_at = parse_time(body["deliver_at"])
        if deliver_at > now + MAX_SCHEDULE_AHEAD:
            raise ProtocolError("deliver_at is more than a year ahead")
    return NotifyRequest(
        audience=audience,
        type=kind,
        severity=str(severity),
        title=_text(body, "title", required=True, limit=MAX_TITLE),
        body=_text(body, "body", required=False, limit=MAX_BODY),
        data=data,
        dedupe_key=dedupe_key,
        deliver_at=deliver_at,
    )


def notification_push(notification: Notification, unread: int) -> dict[str, Any]:
    """What a recipient's connections get: the notification and the inbox's new unread count."""
    return {"push": "notification", "notification": notification.encode(), "unread": unread}


def unread_push(unread: int) -> dict[str, Any]:
    """What a user's connections get when read state changes (on any node)."""
    return {"push": "unread", "unread": unread}


# --- the service ------------------------------------------------------------------------------------


class FanOutJobs(JobProducer, JobCheckpoints, Protocol):
    """What the notifier needs of the job queue: enqueue fan-outs, and checkpoint them while they run."""


class Notifier:
    """Notifies users through their inboxes and their personal channels (guarantees: module docstring)."""

    def __init__(
        self,
        store: NotificationStore,
        jobs: FanOutJobs,
        backplane: Backplane,
        *,
        batch_size: int = 500,
        batch_interval: float = 0.0,
        dedupe_ttl: float = DEDUPE_TTL,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.backplane = backplane
        self.batch_size = batch_size
        self.batch_interval = batch_interval  # pause between fan-out batches (spares Redis on huge topics)
        self.dedupe_ttl = dedupe_ttl
        self.delivered = 0  # inbox adds by this node, for /metrics
        self.failed_pushes = 0

    async def notify(self, request: NotifyRequest, *, now: float | None = None) -> dict[str, Any]:
        """Deliver (``users``) or enqueue (topic, all, scheduled) one notification.

        Returns:
            ``{id, recipients}`` (plus ``deliver_at`` when scheduled, ``duplicate`` for a repeated dedupe_key).

        Raises:
            StoreUnavailable: nothing is acknowledged; the caller may retry (with the same dedupe_key).
        """
        now = time.time() if now is None else now
        deliver_at = (
            request.deliver_at if request.deliver_at is not None and request.deliver_at > now else None
        )
        record: dict[str, Any] = {"id": new_notification_id(now), "ts": int((deliver_at or now) * 1000)}
        if request.dedupe_key is not None:
            existing = await self.store.claim_dedupe(request.dedupe_key, record, ttl=self.dedupe_ttl)
            if existing is not None and "result" in existing:
                return {**existing["result"], "duplicate": True}
            if existing is not None:  # the first attempt stopped halfway: finish it under the same id
                record = {"id": existing["id"], "ts": existing["ts"]}
        notification = Notification(
            record["id"],
            request.type,
            request.severity,
            request.title,
            request.body,
            request.data,
            record["ts"],
        )
        audience = request.audience
        if audience.users:
            recipients = len(audience.users)
        else:
            recipients = await self.store.audience_size(audience.topic)
        if audience.users and deliver_at is None:
            await self.deliver(audience.users, notification)
        else:
            payload = {"notification": json.loads(notification.dumps()), "audience": audience.encode()}
            await self.jobs.enqueue(NOTIFY_JOB, payload, run_at=deliver_at)
        result: dict[str, Any] = {"id": notification.id, "recipients": recipients}
        if deliver_at is not None:
            result["deliver_at"] = deliver_at
        if request.dedupe_key is not None:
            await self.store.save_dedupe(
                request.dedupe_key, {**record, "result": result}, ttl=self.dedupe_ttl
            )
        return result

    async def deliver(self, users: Sequence[str], notification: Notification) -> int:
        """Add ``notification`` to each inbox that lacks it, and push it to those users; return how many."""
        encoded = notification.dumps()
        delivered = 0
        for start in range(0, len(users), self.batch_size):
            batch = users[start : start + self.batch_size]
            unread = await self.store.add(batch, notification.id, encoded)
            fresh = [(user, count) for user, count in zip(batch, unread, strict=True) if count is not None]
            delivered += len(fresh)
            results = await asyncio.gather(
                *(self._push(user, notification_push(notification, count)) for user, count in fresh),
                return_exceptions=True,
            )
            self._count_failed_pushes(results)
        self.delivered += delivered
        return delivered

    async def _push(self, user: str, push: dict[str, Any]) -> None:
        # A sender-less ephemeral publication of kind "notification"/"unread" (backplane.kind_of): the hub
        # delivers it as the push itself.
        await self.backplane.publish(Channel.personal(user).text, push, ephemeral=True)

    def _count_failed_pushes(self, results: Sequence[object]) -> None:
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # The inboxes hold the notification; only the live push is lost, and the user sees it on the
            # next list or connect. A retry could not help: a repeated add pushes nothing.
            self.failed_pushes += len(failed)
            logger.warning("%d live notification pushes failed: %r", len(failed), failed[0])

    async def run_job(self, job: Job) -> None:
        """The ``notify`` job: deliver to a list, a topic or everyone, in checkpointed batches."""
        notification = Notification.decode(job.payload["notification"])
        audience = Audience.decode(job.payload["audience"])
        if audience.users:
            users = list(audience.users)
            start = int(await self.jobs.load_progress(job.id) or 0)
            for index in range(start, len(users), self.batch_size):
                await self.deliver(users[index : index + self.batch_size], notification)
                await self.jobs.save_progress(job.id, str(index + self.batch_size))
            return
        cursor = await self.jobs.load_progress(job.id) or SCAN_DONE
        for _ in range(10_000_000):  # bounded: a scan ends when the cursor is back at the start
            cursor, users = await self.store.scan_audience(audience.topic, cursor, self.batch_size)
            await self.deliver(users, notification)
            if cursor == SCAN_DONE:
                return
            await self.jobs.save_progress(job.id, cursor)
            if self.batch_interval > 0:
                await asyncio.sleep(self.batch_interval)
        raise RuntimeError("fan-out scan did not end")

    async def page(
        self,
        user: str,
        *,
        unread_only: bool = False,
        limit: int = 50,
        before: str | None = None,
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        """``{notifications, unread, cursor?}`` of the user's inbox, newest first.

        At most ``max_bytes`` of stored notifications (at least one); ``cursor`` is there when the
        page is full or was cut short: pass it as ``before`` to read on.
        """
        page = await self.store.page(user, unread_only=unread_only, limit=limit, before=before)
        notifications: list[dict[str, Any]] = []
        size = 0
        for item, read in page.items:
            size += len(item)
            if max_bytes is not None and notifications and size > max_bytes:
                break
            notifications.append({**json.loads(item), "read": read})
        result: dict[str, Any] = {"notifications": notifications, "unread": page.unread}
        if notifications and (len(notifications) < len(page.items) or len(page.items) >= limit):
            result["cursor"] = notifications[-1]["id"]
        return result

    async def read(self, user: str, ids: Sequence[str] = (), *, read_all: bool = False) -> int:
        """Mark read; every connection of the user, on every node, gets the new unread count."""
        unread = await (self.store.mark_all_read(user) if read_all else self.store.mark_read(user, ids))
        try:
            await self._push(user, unread_push(unread))
        except BackplaneUnavailable:
            self._count_failed_pushes([BackplaneUnavailable("unread push failed")])
        return unread

    async def check_in(self, user: str) -> int:
        """A connection of ``user`` opened: remember the user (audience of ``all``); return its unread count."""
        return await self.store.check_in(user)
