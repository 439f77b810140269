"""Notifications: validation (pure), the store contract and the Notifier over memory and Redis,
a real single node end to end, and several real nodes sharing a Redis/Valkey server.

Multi-process cluster tests (a 20,000-subscriber topic, SIGKILL during a fan-out, TIDINGS_JOBS=off) live in
tests/cluster/test_notifications_cluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tidings.client import AsyncPublisher, Connection, Publisher, PublishError, RedisEmitter
from tidings.server.cluster.backplane import Publication
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.backplane.memory import InMemoryBackplane
from tidings.server.cluster.lease import Lease, LocalLease, RedisLease
from tidings.server.gateway.protocol import ProtocolError
from tidings.server.jobs.queue import Job, JobQueue, new_job_id
from tidings.server.jobs.queue_memory import InMemoryJobQueue
from tidings.server.jobs.queue_redis import RedisJobQueue
from tidings.server.jobs.worker import JobWorker
from tidings.server.notify.notifier import (
    NOTIFY_JOB,
    Audience,
    Notification,
    Notifier,
    NotifyRequest,
    parse_notify_request,
    parse_time,
)
from tidings.server.notify.store import NotificationStore
from tidings.server.notify.store_memory import InMemoryNotificationStore
from tidings.server.notify.store_redis import RedisNotificationStore

from .support.node import API_KEY, RunningNode, run_node
from .support.node import test_settings as node_settings
from .support.timing import UNIT, wait_until

HEADERS = {"authorization": f"Bearer {API_KEY}"}
NOW = 1_800_000_000.0


# --- validation (pure) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field_named"),
    [
        ({"title": "t"}, "recipients"),
        ({"users": [], "title": "t"}, "users"),
        ({"users": "alice", "title": "t"}, "users"),
        ({"users": ["a"] * 1001, "title": "t"}, "at most 1000"),
        ({"users": ["bad user"], "title": "t"}, "users[]"),
        ({"users": ["a"], "topic": "x", "title": "t"}, "only one"),
        ({"all": "yes", "title": "t"}, "all"),
        ({"topic": "no spaces", "title": "t"}, "topic"),
        ({"users": ["a"]}, "title"),
        ({"users": ["a"], "title": "   "}, "title"),
        ({"users": ["a"], "title": "x" * 201}, "title"),
        ({"users": ["a"], "title": "t", "severity": "critical"}, "severity"),
        ({"users": ["a"], "title": "t", "type": "has space"}, "type"),
        ({"users": ["a"], "title": "t", "body": 5}, "body"),
        ({"users": ["a"], "title": "t", "data": {"blob": "x" * 20000}}, "data"),
        ({"users": ["a"], "title": "t", "data": {"n": float("nan")}}, "data"),
        ({"users": ["a"], "title": "t", "dedupe_key": ""}, "dedupe_key"),
        ({"users": ["a"], "title": "t", "deliver_at": "tomorrow"}, "deliver_at"),
        ({"users": ["a"], "title": "t", "deliver_at": NOW + 400 * 86400}, "deliver_at"),
        ({"users": ["a"], "title": "t", "deliver_at": True}, "deliver_at"),
    ],
)
def test_bad_notify_request_names_the_field(body: dict[str, Any], field_named: str) -> None:
    """Every bad body is refused with a 400 whose message names what is wrong."""
    with pytest.raises(ProtocolError) as error:
        parse_notify_request(body, now=NOW)
    assert error.value.code == 400
    assert field_named in error.value.message


def test_notify_request_defaults_and_dedupes_users() -> None:
    """Severity defaults to info, repeated users count once, ISO 8601 and epoch times both parse."""
    request = parse_notify_request(
        {"users": ["bob", "alice", "bob"], "title": "Hi", "deliver_at": "2027-01-15T08:00:00Z"}, now=NOW
    )
    assert request.audience.users == ("bob", "alice")
    assert (request.severity, request.type, request.body, request.data) == ("info", "notification", "", None)
    assert request.deliver_at == 1_800_000_000.0
    assert parse_time("2027-01-15T08:00:00Z") == parse_time("2027-01-15T09:00:00+01:00") == 1_800_000_000.0
    assert parse_time("2027-01-15T08:00:00") == 1_800_000_000.0  # no offset: UTC
    assert parse_time(1_800_000_000) == 1_800_000_000.0


def test_notification_round_trips_through_its_stored_form() -> None:
    notification = Notification("n1", "order.shipped", "success", "Shipped", "Box 1", {"order": 7}, 1234)
    assert Notification.decode(notification.encode()) == notification
    assert "read" not in notification.dumps()
    assert Audience.decode(Audience(topic="t").encode()) == Audience(topic="t")
    assert Audience.decode(Audience(everyone=True).encode()) == Audience(everyone=True)


# --- the store contract, over memory and Redis --------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def redis_or_none(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis | None]:
    if request.param == "memory":
        yield None
        return
    client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"), socket_timeout=2.0)
    try:
        yield client
    finally:
        await client.aclose()


def make_store(client: aioredis.Redis | None, key_prefix: str, **options: Any) -> NotificationStore:
    if client is None:
        return InMemoryNotificationStore(**options)
    return RedisNotificationStore(client, key_prefix=key_prefix, **options)


def stored(n: int) -> tuple[str, str]:
    notification = Notification(f"n{n:03d}", "t", "info", f"title {n}", "", None, n)
    return notification.id, notification.dumps()


async def test_store_add_is_idempotent_and_counts_unread(redis_or_none: Any, key_prefix: str) -> None:
    store = make_store(redis_or_none, key_prefix)
    assert await store.add(["alice", "bob"], *stored(1)) == [1, 1]
    assert await store.add(["alice", "carol"], *stored(1)) == [None, 1]  # a re-run adds nothing
    assert await store.add(["alice"], *stored(2)) == [2]
    assert await store.check_in("alice") == 2
    assert await store.check_in("nobody") == 0
    page = await store.page("alice", unread_only=False, limit=10, before=None)
    assert [item.split('"id":"')[1][:4] for item, _ in page.items] == ["n002", "n001"]
    assert page.unread == 2


async def test_store_read_state_pages_and_bound(redis_or_none: Any, key_prefix: str) -> None:
    store = make_store(redis_or_none, key_prefix, inbox_size=5)
    for n in range(1, 8):
        await store.add(["alice"], *stored(n))
    page = await store.page("alice", unread_only=False, limit=10, before=None)
    ids = [Notification.decode(json.loads(item)).id for item, _ in page.items]
    assert ids == ["n007", "n006", "n005", "n004", "n003"]  # bounded: the two oldest are gone
    assert page.unread == 5
    assert await store.mark_read("alice", ["n004", "n006", "n001", "nope"]) == 3
    unread = await store.page("alice", unread_only=True, limit=10, before=None)
    assert [read for _, read in unread.items] == [False, False, False]
    assert len(unread.items) == 3
    older = await store.page("alice", unread_only=False, limit=2, before="n005")
    assert [(json.loads(item)["id"], read) for item, read in older.items] == [("n004", True), ("n003", False)]
    assert (await store.page("alice", unread_only=False, limit=2, before="gone")).items == []
    assert await store.mark_all_read("alice") == 0
    assert await store.check_in("alice") == 0
    assert await store.mark_read("alice", []) == 0


async def test_store_topic_scan_returns_every_subscriber(redis_or_none: Any, key_prefix: str) -> None:
    store = make_store(redis_or_none, key_prefix)
    users = [f"user-{i}" for i in range(700)]
    for user in users:
        await store.subscribe("build.failed", user)
    await store.subscribe("other", "zed")
    await store.unsubscribe("build.failed", "user-0")
    assert await store.audience_size("build.failed") == 699
    seen: list[str] = []
    cursor = "0"
    for _ in range(1000):
        cursor, batch = await store.scan_audience("build.failed", cursor, 100)
        seen.extend(batch)
        if cursor == "0":
            break
    assert set(seen) == set(users[1:])
    assert await store.audience_size(None) == 701  # subscribing makes a user known (audience of all)


async def test_store_dedupe_claim(redis_or_none: Any, key_prefix: str) -> None:
    store = make_store(redis_or_none, key_prefix)
    assert await store.claim_dedupe("k", {"id": "a"}, ttl=60) is None
    assert await store.claim_dedupe("k", {"id": "b"}, ttl=60) == {"id": "a"}
    await store.save_dedupe("k", {"id": "a", "result": {"id": "a"}}, ttl=60)
    assert await store.claim_dedupe("k", {"id": "c"}, ttl=60) == {"id": "a", "result": {"id": "a"}}


# --- the Notifier over memory and Redis -----------------------------------------------------------------


@dataclass
class Setup:
    notifier: Notifier
    backplane: InMemoryBackplane
    worker: JobWorker
    pushes: list[Publication] = field(default_factory=list)

    @property
    def store(self) -> NotificationStore:
        return self.notifier.store

    @property
    def jobs(self) -> JobQueue:
        return self.notifier.jobs

    async def listen(self, *users: str) -> None:
        for user in users:
            await self.backplane.subscribe(f"user:{user}")

    def pushes_to(self, user: str, kind: str = "notification") -> list[dict[str, Any]]:
        return [p.data for p in self.pushes if p.channel == f"user:{user}" and p.data["push"] == kind]

    async def inbox(self, user: str) -> dict[str, Any]:
        return await self.notifier.page(user, limit=200)


@pytest.fixture
async def setup(redis_or_none: Any, key_prefix: str) -> AsyncIterator[Setup]:
    backplane = InMemoryBackplane()
    jobs: JobQueue
    lease: Lease
    if redis_or_none is None:
        jobs, lease = InMemoryJobQueue(), LocalLease()
    else:
        jobs = RedisJobQueue(redis_or_none, key_prefix=key_prefix)
        lease = RedisLease(redis_or_none, redis_keys.lease(key_prefix, "job-promote"), ttl=1.0)
    notifier = Notifier(make_store(redis_or_none, key_prefix), jobs, backplane, batch_size=100)
    worker = JobWorker(
        jobs,
        {NOTIFY_JOB: notifier.run_job},
        consumer="node-1",
        lease=lease,
        poll_interval=0.05,
        block_timeout=0.2,
    )
    result = Setup(notifier, backplane, worker)
    await backplane.start(result.pushes.append)
    await worker.start()
    try:
        yield result
    finally:
        await worker.stop()
        await backplane.close()


def request(**fields: Any) -> NotifyRequest:
    return parse_notify_request(
        {"title": "Order shipped", "type": "order.shipped", **fields}, now=time.time()
    )


async def test_users_get_it_in_their_inbox_and_live_once(setup: Setup) -> None:
    """A notification to two users is in both inboxes when notify returns, pushed once to each."""
    await setup.listen("alice", "bob")
    result = await setup.notifier.notify(
        request(users=["alice", "bob"], severity="success", data={"order": 7})
    )
    assert result["recipients"] == 2
    for user in ("alice", "bob"):
        inbox = await setup.inbox(user)
        assert inbox["unread"] == 1
        [item] = inbox["notifications"]
        assert item["id"] == result["id"] and item["read"] is False
        assert (item["type"], item["severity"], item["data"]) == ("order.shipped", "success", {"order": 7})
        [push] = setup.pushes_to(user)
        assert push == {"push": "notification", "notification": item, "unread": 1}


async def test_repeated_dedupe_key_notifies_once(setup: Setup) -> None:
    await setup.listen("alice")
    first = await setup.notifier.notify(request(users=["alice"], dedupe_key="order-7-shipped"))
    again = await setup.notifier.notify(request(users=["alice"], dedupe_key="order-7-shipped"))
    assert again["id"] == first["id"] and again["duplicate"] is True
    assert (await setup.inbox("alice"))["unread"] == 1
    assert len(setup.pushes_to("alice")) == 1


async def test_retry_after_a_half_done_request_finishes_it_under_the_same_id(setup: Setup) -> None:
    """The first attempt claimed the dedupe key, reached alice and died: the retry reaches bob only."""
    half = await setup.notifier.notify(request(users=["alice"]))
    await setup.store.claim_dedupe("k1", {"id": half["id"], "ts": 1}, ttl=60)
    await setup.listen("alice", "bob")
    result = await setup.notifier.notify(request(users=["alice", "bob"], dedupe_key="k1"))
    assert result["id"] == half["id"]
    assert (await setup.inbox("alice"))["unread"] == 1 and (await setup.inbox("bob"))["unread"] == 1
    assert setup.pushes_to("alice") == [] and len(setup.pushes_to("bob")) == 1


async def test_mark_read_pushes_the_unread_count(setup: Setup) -> None:
    await setup.listen("alice")
    ids = [(await setup.notifier.notify(request(users=["alice"], title=f"#{n}")))["id"] for n in range(3)]
    assert await setup.notifier.read("alice", [ids[0]]) == 2
    assert await setup.notifier.read("alice", read_all=True) == 0
    assert setup.pushes_to("alice", "unread") == [
        {"push": "unread", "unread": 2},
        {"push": "unread", "unread": 0},
    ]
    inbox = await setup.inbox("alice")
    assert [n["read"] for n in inbox["notifications"]] == [True, True, True]


async def test_topic_fan_out_reaches_each_subscriber_once(setup: Setup) -> None:
    """1,000 subscribers, batches of 100: the request only enqueues; the job reaches everyone once."""
    users = [f"u{i:04d}" for i in range(1000)]
    for user in users:
        await setup.store.subscribe("build.failed", user)
    await setup.listen(*users)
    result = await setup.notifier.notify(request(topic="build.failed", severity="error"))
    assert result["recipients"] == 1000
    await wait_until(lambda: setup.notifier.delivered == 1000, what="fan-out finished")
    await wait_until(lambda: _counts(setup.jobs, done=1), what="job done")
    assert sorted(p.channel for p in setup.pushes) == sorted(f"user:{u}" for u in users)
    for user in users[::97]:
        inbox = await setup.inbox(user)
        assert [n["id"] for n in inbox["notifications"]] == [result["id"]]


async def test_fan_out_rerun_after_a_crash_delivers_nothing_twice(setup: Setup) -> None:
    """A fan-out killed halfway and run again (as after XAUTOCLAIM) resumes; no inbox gets it twice."""
    users = [f"u{i:04d}" for i in range(600)]
    for user in users:
        await setup.store.subscribe("deploys", user)
    await setup.listen(*users)
    notification = Notification("n-crash", "deploy", "info", "Deployed", "", None, 1)
    job = Job(
        new_job_id(), NOTIFY_JOB, {"notification": notification.encode(), "audience": {"topic": "deploys"}}
    )
    # A long pause after each batch: the "crash" lands between two batches however slow the machine is.
    setup.notifier.batch_size, setup.notifier.batch_interval = 50, 60.0
    crashed = asyncio.create_task(setup.notifier.run_job(job))
    await wait_until(lambda: setup.notifier.delivered > 0, what="a first batch delivered")
    crashed.cancel()  # the node dies
    with contextlib.suppress(asyncio.CancelledError):
        await crashed
    halfway = setup.notifier.delivered
    assert 0 < halfway < 600
    assert await setup.jobs.load_progress(job.id) is not None  # the checkpoint the re-run resumes from
    setup.notifier.batch_interval = 0.0
    await setup.notifier.run_job(job)  # another node re-runs it from the checkpoint
    assert setup.notifier.delivered == 600
    assert sorted(p.channel for p in setup.pushes) == sorted(f"user:{u}" for u in users)
    for user in users[::53]:
        assert [n["id"] for n in (await setup.inbox(user))["notifications"]] == ["n-crash"]


async def test_notify_all_reaches_every_known_user(setup: Setup) -> None:
    for user in ("ann", "ben", "cat"):
        await setup.notifier.check_in(user)
    result = await setup.notifier.notify(request(all=True, title="Maintenance at 22:00", severity="warn"))
    assert result["recipients"] == 3
    await wait_until(lambda: setup.notifier.delivered == 3, what="everyone notified")
    assert (await setup.inbox("cat"))["notifications"][0]["title"] == "Maintenance at 22:00"


async def test_scheduled_notification_arrives_at_its_time(setup: Setup) -> None:
    await setup.listen("alice")
    deliver_at = time.time() + 0.8
    result = await setup.notifier.notify(request(users=["alice"], deliver_at=deliver_at))
    assert result["deliver_at"] == pytest.approx(deliver_at)
    assert (await setup.inbox("alice"))["unread"] == 0
    await wait_until(lambda: bool(setup.pushes_to("alice")), timeout=5 * UNIT, what="scheduled push")
    arrived = time.time()
    assert deliver_at <= arrived < deliver_at + 1.0
    [item] = (await setup.inbox("alice"))["notifications"]
    assert item["ts"] == int(deliver_at * 1000)


async def _counts(jobs: JobQueue, **expected: int) -> bool:
    counts = (await jobs.counts()).encode()
    return all(counts[k] == v for k, v in expected.items())


# --- one real node (memory backplane), end to end ------------------------------------------------------


async def next_push(connection: Connection, kind: str) -> dict[str, Any]:
    for _ in range(1000):
        push = await connection.recv(timeout=5 * UNIT)
        if push.get("push") == kind:
            return push
    raise AssertionError(f"no {kind} push")


async def no_push(connection: Connection, kind: str, *, within: float = 0.3) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            for _ in range(1000):
                push = await connection.recv()
                assert push.get("push") != kind, f"unexpected {push}"


async def post(http: httpx.AsyncClient, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = await http.post(path, json=body)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_offline_user_finds_it_at_connect(node: RunningNode, token: Callable[[str], str]) -> None:
    async with httpx.AsyncClient(base_url=node.http_url, headers=HEADERS) as http:
        sent = await post(
            http, "/api/notifications", {"users": ["dora"], "title": "Welcome", "severity": "info"}
        )
        await post(http, "/api/notifications", {"users": ["dora"], "title": "Invoice", "severity": "warn"})
        async with Connection(node.ws_url, token("dora")) as dora:
            assert dora.info["unread"] == 2
            listed = await dora.call("notifications", limit=10)
            assert [n["title"] for n in listed["notifications"]] == ["Invoice", "Welcome"]
            assert listed["unread"] == 2
            assert (await dora.call("read", ids=[sent["id"]])) == {"unread": 1}
            unread_only = await dora.call("notifications", unread_only=True)
            assert [n["title"] for n in unread_only["notifications"]] == ["Invoice"]
        body = (await http.get("/api/users/dora/notifications", params={"unread_only": "true"})).json()
        assert body["unread"] == 1 and [n["title"] for n in body["notifications"]] == ["Invoice"]


async def test_online_user_gets_one_push_per_connection_and_read_updates_others(
    node: RunningNode, token: Callable[[str], str]
) -> None:
    async with (
        httpx.AsyncClient(base_url=node.http_url, headers=HEADERS) as http,
        Connection(node.ws_url, token("erin")) as phone,
        Connection(node.ws_url, token("erin")) as laptop,
    ):
        sent = await post(
            http, "/api/notifications", {"users": ["erin"], "title": "Build failed", "severity": "error"}
        )
        for connection in (phone, laptop):
            push = await next_push(connection, "notification")
            assert push["notification"]["id"] == sent["id"] and push["unread"] == 1
            await no_push(connection, "notification", within=0.2)
        assert await phone.call("read", all=True) == {"unread": 0}
        assert (await next_push(laptop, "unread"))["unread"] == 0
        assert (await post(http, "/api/users/erin/notifications/read", {"all": True})) == {"unread": 0}


async def test_bad_requests_are_refused_and_write_nothing(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.http_url, headers=HEADERS) as http:
        bad = [
            ({"users": ["fred"], "title": "x", "severity": "urgent"}, "severity"),
            ({"users": ["fred"], "severity": "info"}, "title"),
            ({"title": "x"}, "recipients"),
            ({"users": [f"u{i}" for i in range(1001)], "title": "x"}, "users"),
            ({"users": ["fred"], "title": "x", "data": {"x": "y" * 20_000}}, "data"),
        ]
        for body, named in bad:
            error = (await post(http, "/api/notifications", body, status=400))["error"]
            assert error["code"] == 400 and named in error["message"]
        assert (await http.get("/api/users/fred/notifications")).json() == {"notifications": [], "unread": 0}
        assert (await http.post("/api/users/fred/notifications/read", json={})).status_code == 400
        assert (await http.get("/api/users/fred/notifications", params={"limit": "0"})).status_code == 400
        assert (await http.put("/api/topics/bad topic/subscribers/fred")).status_code == 400
    async with httpx.AsyncClient(base_url=node.http_url) as anonymous:
        assert (await anonymous.get("/api/jobs")).status_code == 401


async def test_topic_subscriptions_over_http(node: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=node.http_url, headers=HEADERS) as http:
        for user in ("gus", "hal", "ivy"):
            assert (await http.put(f"/api/topics/order.shipped/subscribers/{user}")).status_code == 200
        assert (await http.delete("/api/topics/order.shipped/subscribers/hal")).json()["subscribed"] is False
        sent = await post(http, "/api/notifications", {"topic": "order.shipped", "title": "Shipped"})
        assert sent["recipients"] == 2
        await wait_until(lambda: _inbox_size(http, "ivy", 1), what="topic fan-out")
        assert (await http.get("/api/users/gus/notifications")).json()["unread"] == 1
        assert (await http.get("/api/users/hal/notifications")).json()["unread"] == 0
        await wait_until(lambda: _job_counts(http, done=1, pending=0, running=0), what="job counted done")
        node_stats = (await http.get("/api/jobs")).json()["node"]
        assert node_stats["jobs"] is True and node_stats["done"] == 1


async def _inbox_size(http: httpx.AsyncClient, user: str, size: int) -> bool:
    return len((await http.get(f"/api/users/{user}/notifications")).json()["notifications"]) == size


async def _job_counts(http: httpx.AsyncClient, **expected: int) -> bool:
    counts = (await http.get("/api/jobs")).json()
    return all(counts[k] == v for k, v in expected.items())


# --- several real nodes (in this process) sharing a Redis/Valkey server ------------------------------


@contextlib.asynccontextmanager
async def nodes(
    redis_url: str, key_prefix: str, *jobs: bool, **overrides: Any
) -> AsyncIterator[list[RunningNode]]:
    async with contextlib.AsyncExitStack() as stack:
        running = []
        for i, enabled in enumerate(jobs):
            settings = node_settings(
                redis_url=redis_url, key_prefix=key_prefix, node_id=f"node-{i}", jobs=enabled, **overrides
            )
            running.append(await stack.enter_async_context(run_node(settings)))
        yield running


@pytest.mark.redis
async def test_push_reaches_connections_on_two_nodes_once_and_read_syncs(
    redis_url: str, key_prefix: str, token: Callable[[str], str]
) -> None:
    async with (
        nodes(redis_url, key_prefix, True, True) as (a, b),
        httpx.AsyncClient(base_url=a.http_url, headers=HEADERS) as http,
    ):
        await post(http, "/api/notifications", {"users": ["kim"], "title": "While you were away"})
        async with Connection(a.ws_url, token("kim")) as on_a, Connection(b.ws_url, token("kim")) as on_b:
            assert on_a.info["unread"] == on_b.info["unread"] == 1  # offline, then at connect on any node
            assert on_a.node != on_b.node
            sent = await post(http, "/api/notifications", {"users": ["kim"], "title": "Live"})
            for connection in (on_a, on_b):
                push = await next_push(connection, "notification")
                assert push["notification"]["id"] == sent["id"] and push["unread"] == 2
            for connection in (on_a, on_b):
                await no_push(connection, "notification", within=0.3)
            assert await on_a.call("read", ids=[sent["id"]]) == {"unread": 1}
            assert (await next_push(on_b, "unread"))["unread"] == 1
            assert (await on_b.call("notifications"))["unread"] == 1


@pytest.mark.redis
async def test_with_jobs_off_on_two_of_three_nodes_the_third_does_all_jobs(
    redis_url: str, key_prefix: str
) -> None:
    async with (
        nodes(redis_url, key_prefix, False, False, True) as running,
        contextlib.AsyncExitStack() as stack,
    ):
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=n.http_url, headers=HEADERS))
            for n in running
        ]
        await clients[0].put("/api/topics/ops/subscribers/lee")
        for i in range(12):  # enqueued through every node, jobs-off ones included
            await post(clients[i % 3], "/api/notifications", {"topic": "ops", "title": f"#{i}"})
        await wait_until(lambda: _job_counts(clients[0], done=12, pending=0), what="12 jobs done")
        stats = [(await c.get("/api/jobs")).json()["node"] for c in clients]
        assert [s["jobs"] for s in stats] == [False, False, True]
        assert stats[2]["done"] == 12
        assert (await clients[1].get("/api/users/lee/notifications")).json()["unread"] == 12


@pytest.mark.redis
async def test_dedupe_key_across_nodes_notifies_once(
    redis_url: str, key_prefix: str, token: Callable[[str], str]
) -> None:
    async with (
        nodes(redis_url, key_prefix, True, True) as (a, b),
        httpx.AsyncClient(base_url=a.http_url, headers=HEADERS) as http_a,
        httpx.AsyncClient(base_url=b.http_url, headers=HEADERS) as http_b,
        Connection(a.ws_url, token("max")) as max_,
    ):
        body = {"users": ["max"], "title": "Payment received", "dedupe_key": "payment-991"}
        first = await post(http_a, "/api/notifications", body)
        second = await post(http_b, "/api/notifications", body)  # the backend retried on another node
        assert second["id"] == first["id"]
        await next_push(max_, "notification")
        await no_push(max_, "notification", within=0.3)
        assert (await http_b.get("/api/users/max/notifications")).json()["unread"] == 1


# --- the client: Publisher.notify, tidings notify, RedisEmitter ----------------------------------------


async def test_publisher_and_cli_notify(node: RunningNode, token: Callable[[str], str]) -> None:
    """AsyncPublisher.notify, the sync Publisher and `tidings notify` all reach the user's inbox."""
    async with AsyncPublisher(node.http_url, api_key=API_KEY) as publisher:
        first = await publisher.notify(users=["nina"], title="From the async publisher", severity="success")
        assert first["recipients"] == 1
        with pytest.raises(PublishError) as error:
            await publisher.notify(users=["nina"], title="x", severity="loud")
        assert error.value.status == 400 and "severity" in error.value.message

    def sync_notify() -> dict[str, Any]:
        with Publisher(node.http_url, api_key=API_KEY) as sync:
            return sync.notify(users=["nina"], title="From the sync publisher", dedupe_key="once")

    second = await asyncio.to_thread(sync_notify)
    assert (await asyncio.to_thread(sync_notify))["id"] == second["id"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tidings.server", "notify", "From the shell", "--user", "nina",
        "--severity", "warn", "--data", '{"build": 42}', "--url", node.http_url, "--api-key", API_KEY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30 * UNIT):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    printed = json.loads(stdout)
    async with Connection(node.ws_url, token("nina")) as nina:
        assert nina.info["unread"] == 3
        [shell, *_] = (await nina.call("notifications"))["notifications"]
        assert (shell["id"], shell["severity"], shell["data"]) == (printed["id"], "warn", {"build": 42})


@pytest.mark.redis
async def test_redis_emitter_publishes_and_notifies_like_a_node(
    redis_url: str, key_prefix: str, token: Callable[[str], str]
) -> None:
    async with (
        nodes(redis_url, key_prefix, True) as (a,),
        RedisEmitter(redis_url, key_prefix=key_prefix) as emitter,
        Connection(a.ws_url, token("olaf")) as olaf,
    ):
        await olaf.subscribe("room:news")
        position = await emitter.publish("room:news", {"text": "straight from Redis"})
        assert position is not None and position.offset == 1
        publication = await olaf.publications("room:news", timeout=5 * UNIT)
        assert (publication["offset"], publication["data"]) == (1, {"text": "straight from Redis"})
        assert "from" not in publication  # a backend publication has no sender
        assert (await olaf.history("room:news"))["publications"][0]["data"] == {"text": "straight from Redis"}
        direct = await emitter.notify(users=["olaf"], title="Direct", dedupe_key="d-1")
        assert (await emitter.notify(users=["olaf"], title="Direct", dedupe_key="d-1"))["id"] == direct["id"]
        assert (await next_push(olaf, "notification"))["notification"]["id"] == direct["id"]
        await emitter.subscribe_topic("weather", "olaf")
        fanned = await emitter.notify(topic="weather", title="Storm warning", severity="warn")
        assert fanned["recipients"] == 1
        assert (await next_push(olaf, "notification"))["notification"]["id"] == fanned["id"]  # the node's job
        await no_push(olaf, "notification", within=0.3)
        with pytest.raises(ProtocolError):
            await emitter.notify(users=["olaf"], title="")
