"""Notifications and jobs across real ``tidings serve`` processes sharing one Redis/Valkey server.

The module's cluster runs node-1 and node-2 with ``TIDINGS_JOBS=off``: node-3 does every job,
while requests go to any node. The SIGKILL test starts a cluster of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tidings.client import Connection
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.redis_client import StoreClient
from tidings.server.gateway.auth import issue_token
from tidings.server.jobs.queue_redis import RedisJobQueue

from ..support.backends import Backend
from ..support.cluster import Cluster, NodeProcess, start_cluster
from ..support.node import API_KEY, SECRET
from ..support.timing import UNIT, wait_until

pytestmark = pytest.mark.cluster

HEADERS = {"authorization": f"Bearer {API_KEY}"}
FAST_JOBS = {
    "TIDINGS_JOB_MAX_ATTEMPTS": "3",
    "TIDINGS_JOB_RETRY_BACKOFF": "0.1",
    "TIDINGS_JOB_VISIBILITY_TIMEOUT": "1.5",
}
JOBS_OFF = {"TIDINGS_JOBS": "off"}


@pytest.fixture(scope="module")
def cluster(backend: Backend) -> Iterator[Cluster]:
    """Three nodes; only node-3 takes jobs."""
    with start_cluster(
        3,
        redis_url=backend.url,
        key_prefix=f"t-{uuid.uuid4().hex[:12]}",
        env=FAST_JOBS,
        node_env={"node-1": JOBS_OFF, "node-2": JOBS_OFF},
    ) as running:
        yield running


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def connected(node: NodeProcess, user: str) -> AsyncIterator[Connection]:
    connection = Connection(node.ws_url, issue_token(user, SECRET), reconnect=False)
    await connection.connect()
    try:
        yield connection
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def http_clients(cluster: Cluster) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(httpx.AsyncClient(base_url=node.http_url, headers=HEADERS))
            for node in cluster.nodes
        ]


async def post(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post(path, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def next_push(connection: Connection, kind: str) -> dict[str, Any]:
    for _ in range(1000):
        push = await connection.recv(timeout=10 * UNIT)
        if push.get("push") == kind:
            return push
    raise AssertionError(f"no {kind} push")


async def pushes_within(connection: Connection, kind: str, within: float) -> list[dict[str, Any]]:
    """Every push of ``kind`` that arrives within ``within`` seconds."""
    seen: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            for _ in range(100_000):
                push = await connection.recv()
                if push.get("push") == kind:
                    seen.append(push)
    return seen


async def jobs_of(http: httpx.AsyncClient) -> dict[str, Any]:
    result: dict[str, Any] = (await http.get("/api/jobs")).json()
    return result


async def jobs_settled(http: httpx.AsyncClient) -> bool:
    counts = await jobs_of(http)
    return bool(counts["pending"] == counts["running"] == counts["delayed"] == 0)


async def inbox_sizes(client: StoreClient, key_prefix: str, users: list[str]) -> list[int]:
    async with client.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.hlen(redis_keys.inbox_items(key_prefix, user))
        return [int(n) for n in await pipe.execute()]


async def subscribe_all(client: StoreClient, key_prefix: str, topic: str, users: list[str]) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for start in range(0, len(users), 1000):
            pipe.sadd(redis_keys.topic_subscribers(key_prefix, topic), *users[start : start + 1000])
        await pipe.execute()


async def test_offline_user_finds_notifications_at_next_connect_on_another_node(cluster: Cluster) -> None:
    user = unique("olga")
    async with http_clients(cluster) as (http1, _, _):
        first = await post(http1, "/api/notifications", {"users": [user], "title": "Welcome"})
        await post(
            http1, "/api/notifications", {"users": [user], "title": "Your invoice", "severity": "warn"}
        )
        async with connected(cluster.nodes[1], user) as connection:
            assert connection.info["unread"] == 2
            listed = await connection.call("notifications")
            assert [n["title"] for n in listed["notifications"]] == ["Your invoice", "Welcome"]
            assert listed["notifications"][1]["id"] == first["id"]
            assert [n["severity"] for n in listed["notifications"]] == ["warn", "info"]


async def test_online_user_on_two_nodes_gets_one_push_on_each_and_read_on_a_updates_b(
    cluster: Cluster,
) -> None:
    user = unique("pia")
    async with (
        http_clients(cluster) as (_, http2, _),
        connected(cluster.nodes[0], user) as on_a,
        connected(cluster.nodes[2], user) as on_b,
    ):
        sent = await post(http2, "/api/notifications", {"users": [user], "title": "Deploy finished"})
        for connection in (on_a, on_b):
            push = await next_push(connection, "notification")
            assert push["notification"]["id"] == sent["id"] and push["unread"] == 1
        for connection in (on_a, on_b):
            assert await pushes_within(connection, "notification", 0.5) == []
        assert await on_a.call("read", ids=[sent["id"]]) == {"unread": 0}
        assert (await next_push(on_b, "unread"))["unread"] == 0
        assert (await http2.get(f"/api/users/{user}/notifications")).json()["unread"] == 0
        listed = await on_b.call("notifications")
        assert [n["read"] for n in listed["notifications"]] == [True]


async def test_repeated_request_with_the_same_dedupe_key_notifies_once(cluster: Cluster) -> None:
    user = unique("quinn")
    body = {"users": [user], "title": "Payment received", "dedupe_key": unique("payment")}
    async with http_clients(cluster) as clients, connected(cluster.nodes[2], user) as connection:
        results = [await post(http, "/api/notifications", body) for http in clients]  # retried on every node
        assert len({r["id"] for r in results}) == 1
        assert [r.get("duplicate", False) for r in results] == [False, True, True]
        assert len(await pushes_within(connection, "notification", 1.0)) == 1
        assert (await clients[0].get(f"/api/users/{user}/notifications")).json()["unread"] == 1


async def test_topic_of_20000_fans_out_completely_once_and_the_request_returns_fast(
    cluster: Cluster, backend_client: StoreClient
) -> None:
    topic, prefix = unique("release"), cluster.key_prefix
    users = [f"{topic}-s{i:05d}" for i in range(20_000)]
    await subscribe_all(backend_client, prefix, topic, users)
    async with http_clients(cluster) as (http1, _, http3), connected(cluster.nodes[1], users[7]) as online:
        await http1.get("/api/jobs")  # warm the HTTP connection
        started = time.perf_counter()
        sent = await post(http1, "/api/notifications", {"topic": topic, "title": "v2 is out"})
        elapsed = time.perf_counter() - started
        assert elapsed < 0.2, f"POST /api/notifications took {elapsed * 1000:.0f} ms"
        assert sent["recipients"] == 20_000
        await wait_until(lambda: jobs_settled(http3), timeout=120 * UNIT, what="fan-out job done")
        sizes = await inbox_sizes(backend_client, prefix, users)
        assert sizes.count(1) == 20_000, "every inbox holds the notification exactly once"
        pushes = await pushes_within(online, "notification", 0.5)
        assert [p["notification"]["id"] for p in pushes] == [sent["id"]]


async def test_a_job_that_always_fails_ends_in_the_dead_letter_stream_after_n_tries(
    cluster: Cluster, backend_client: StoreClient
) -> None:
    """A notify job with no notification raises on every run: 3 runs (TIDINGS_JOB_MAX_ATTEMPTS), then dead."""
    queue = RedisJobQueue(backend_client, key_prefix=cluster.key_prefix)
    job_id = await queue.enqueue("notify", {"audience": {"topic": "broken"}})
    async with http_clients(cluster) as (http1, _, _):

        async def buried() -> bool:
            letters = (await http1.get("/api/jobs/dead")).json()["dead"]
            return any(letter["id"] == job_id for letter in letters)

        await wait_until(buried, timeout=30 * UNIT, what="job dead-lettered")
        [letter] = [d for d in (await http1.get("/api/jobs/dead")).json()["dead"] if d["id"] == job_id]
        assert letter["attempts"] == 3 and "KeyError" in letter["error"]
        entries = await backend_client.xrange(redis_keys.jobs_dead(cluster.key_prefix))
        assert sum(job_id.encode() in fields[b"job"] for _, fields in entries) == 1
        await wait_until(lambda: jobs_settled(http1), what="nothing left pending")


async def test_with_jobs_off_on_two_of_three_nodes_the_third_does_all_jobs(
    cluster: Cluster, backend_client: StoreClient
) -> None:
    topic, user = unique("ops"), unique("lee")
    async with http_clients(cluster) as clients:
        before = (await jobs_of(clients[2]))["node"]["done"]
        assert (await clients[0].put(f"/api/topics/{topic}/subscribers/{user}")).status_code == 200
        for i in range(12):  # enqueued through every node, the jobs-off ones included
            await post(clients[i % 3], "/api/notifications", {"topic": topic, "title": f"#{i}"})
        await wait_until(lambda: jobs_settled(clients[0]), timeout=30 * UNIT, what="12 jobs done")
        stats = [(await jobs_of(http))["node"] for http in clients]
        assert [s["jobs"] for s in stats] == [False, False, True]
        assert stats[2]["done"] - before >= 12
        assert (await clients[1].get(f"/api/users/{user}/notifications")).json()["unread"] == 12
    consumers = await backend_client.xinfo_consumers(redis_keys.jobs_stream(cluster.key_prefix), "workers")
    assert {c["name"].decode() for c in consumers} == {"node-3"}  # node-1 and node-2 never read a job


async def test_sigkill_during_fan_out_another_node_finishes_it_and_no_inbox_gets_it_twice(
    backend: Backend, backend_client: StoreClient
) -> None:
    """6,000 subscribers, batches of 200 with a pause: kill the node running the job once a few
    batches are done; the other node reclaims it after the visibility timeout and finishes it."""
    prefix, topic = f"t-{uuid.uuid4().hex[:12]}", "incident"
    users = [f"u{i:04d}" for i in range(6000)]
    await subscribe_all(backend_client, prefix, topic, users)
    env = {**FAST_JOBS, "TIDINGS_FANOUT_BATCH_SIZE": "200", "TIDINGS_FANOUT_BATCH_INTERVAL": "0.1"}
    with start_cluster(2, redis_url=backend.url, key_prefix=prefix, env=env) as cluster:
        async with (
            http_clients(cluster) as clients,
            connected(cluster.nodes[0], users[-1]) as on_1,
            connected(cluster.nodes[1], users[-2]) as on_2,
        ):
            sent = await post(
                clients[0], "/api/notifications", {"topic": topic, "title": "Database failover"}
            )
            stream = redis_keys.jobs_stream(prefix)
            runner: list[str] = []

            async def taken() -> bool:
                pending = await backend_client.xpending_range(stream, "workers", "-", "+", 10)
                runner[:] = [p["consumer"].decode() for p in pending]
                return len(runner) == 1

            await wait_until(taken, what="the fan-out job taken by a node")
            await wait_until(
                lambda: _filled_at_least(backend_client, prefix, users, 1000), what="a few batches delivered"
            )
            [victim] = [n for n in cluster.nodes if n.node_id == runner[0]]
            victim.kill()
            filled = sum(await inbox_sizes(backend_client, prefix, users))
            assert 1000 <= filled < 6000, f"killed at {filled} of 6000: not halfway"
            survivor = next(n for n in cluster.nodes if n is not victim)
            survivor_http = clients[cluster.nodes.index(survivor)]
            await wait_until(lambda: jobs_settled(survivor_http), timeout=60 * UNIT, what="job finished")
            sizes = await inbox_sizes(backend_client, prefix, users)
            assert sizes.count(1) == 6000, f"inbox sizes {set(sizes)}: every inbox exactly once"
            counts = await jobs_of(survivor_http)
            assert counts["node"]["done"] == 1 and counts["dead"] == 0
            on_survivor = on_1 if survivor is cluster.nodes[0] else on_2
            pushes = await pushes_within(on_survivor, "notification", 0.5)
            assert [p["notification"]["id"] for p in pushes] == [sent["id"]]


async def _filled_at_least(client: StoreClient, prefix: str, users: list[str], count: int) -> bool:
    return sum(await inbox_sizes(client, prefix, users)) >= count
