"""``GET /metrics``: Prometheus text that agrees with what really happened on a live node."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from tidings.client import Connection
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.gateway.connection import Connection as ServerConnection
from tidings.server.logs import JsonFormatter, bind_connection, connection_id
from tidings.server.metrics import LatencyHistogram

from .support.node import API_KEY, RunningNode, run_node
from .support.node import test_settings as node_settings
from .support.timing import UNIT, wait_until

Token = Callable[..., str]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(node: RunningNode) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{node.http_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        assert family.name.startswith("tidings_"), family.name
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# --- pure ---------------------------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = LatencyHistogram([0.1, 1.0])
    for seconds in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert histogram.count == 4 and histogram.sum == pytest.approx(3.65)


def test_json_log_lines_carry_node_and_connection() -> None:
    formatter = JsonFormatter("node-a")
    record = logging.makeLogRecord(
        {"name": "tidings.x", "levelname": "WARNING", "msg": "hi %s", "args": ("you",)}
    )
    assert "connection" not in json.loads(formatter.format(record))

    async def in_a_connection_task() -> dict[str, Any]:
        bind_connection("c0ffee")
        return json.loads(formatter.format(record))  # type: ignore[no-any-return]

    line = asyncio.run(in_a_connection_task())
    assert line["node"] == "node-a" and line["connection"] == "c0ffee" and line["message"] == "hi you"
    assert line["level"] == "warning" and line["logger"] == "tidings.x"
    assert connection_id.get() is None  # the binding stayed inside that task's context


# --- live ---------------------------------------------------------------------------------------------


async def test_metrics_follow_connections_publications_and_deliveries(token: Token) -> None:
    async with run_node(node_settings()) as node:
        before = await scrape(node)
        assert value(before, "tidings_connections") == 0 and value(before, "tidings_deliveries_total") == 0
        alice, bob = Connection(node.ws_url, token("alice")), Connection(node.ws_url, token("bob"))
        await alice.connect(["room:m"])
        await bob.connect(["room:m"])
        try:
            await wait_until(
                lambda: len(node.server.lifespan.state["hub"].connections) == 2, what="2 sessions"
            )
            # Joining a room publishes presence events too: count from here on.
            connected = await scrape(node)
            for n in range(5):
                await alice.publish("room:m", {"n": n})
            async with httpx.AsyncClient() as http:
                response = await http.post(
                    f"{node.http_url}/api/publish",
                    json={"channel": "room:m", "data": {"n": 5}},
                    headers={"authorization": f"Bearer {API_KEY}"},
                )
                assert response.status_code == 200
            for client in (alice, bob):
                for _ in range(6):
                    await client.publications("room:m", timeout=5 * UNIT)
            samples = await scrape(node)
        finally:
            await alice.close()
            await bob.close()
        assert value(samples, "tidings_connections") == 2
        assert value(samples, "tidings_users") == 2
        assert value(samples, "tidings_sockets") == 2
        assert value(samples, "tidings_subscriptions") == 4  # user:alice, user:bob and room:m twice
        assert value(samples, "tidings_channels") == 3
        assert value(samples, "tidings_publications_published_total") == 6  # 5 over the socket, 1 over HTTP
        assert value(samples, "tidings_backplane_publish_seconds_count") == 6
        assert value(samples, "tidings_backplane_publish_seconds_bucket", le="+Inf") == 6
        received = value(samples, "tidings_publications_received_total")
        assert received - value(connected, "tidings_publications_received_total") == 6
        deliveries = value(samples, "tidings_deliveries_total")
        assert (
            deliveries - value(connected, "tidings_deliveries_total") == 12
        )  # 6 publications, 2 subscribers
        assert value(samples, "tidings_up", node=node.settings.node_id) == 1
        assert value(samples, "tidings_draining") == 0 and value(samples, "tidings_backplane_ready") == 1

        state = node.server.lifespan.state
        await wait_until(lambda: not state["hub"].connections, what="both clients to be gone")
        after = await scrape(node)
        assert value(after, "tidings_connections") == 0 and value(after, "tidings_subscriptions") == 0
        assert value(after, "tidings_disconnects_total", code="0") == 2  # both clients closed first
        assert value(after, "tidings_sockets_accepted_total") == 2


async def test_slow_disconnects_and_dropped_frames_are_counted(token: Token) -> None:
    """An outbox overflow closes with 4008; /metrics counts the close and the frame that did not fit."""
    async with run_node(node_settings(outbox_size=64 * 1024)) as node:
        slow = Connection(node.ws_url, token("slow"), reconnect=False)
        info = await slow.connect()
        try:
            state = node.server.lifespan.state
            server_side = state["hub"].connections[info["client"]]
            assert isinstance(server_side, ServerConnection)
            server_side.send_frame("x" * (64 * 1024 + 1))  # one frame more than the outbox holds
            async with asyncio.timeout(5 * UNIT):
                while (push := await slow.recv())["push"] != "closed":
                    pass
            assert push["code"] == 4008
            await wait_until(lambda: not state["hub"].connections, what="the slow client to be gone")
            samples = await scrape(node)
        finally:
            await slow.close()
        assert value(samples, "tidings_slow_disconnects_total") == 1
        assert value(samples, "tidings_disconnects_total", code="4008") == 1
        assert value(samples, "tidings_outbox_dropped_frames_total") >= 1


async def test_sources_hook_adds_families_at_scrape_time() -> None:
    """Any part plugs its families in with the node's MetricsRegistry.add_source."""
    async with run_node(node_settings()) as node:
        done = {"fanout": 0}

        def jobs() -> Iterable[Metric]:
            family = CounterMetricFamily("tidings_job_types", "Jobs run, by type.", labels=["job"])
            for job, count in done.items():
                family.add_metric([job], count)
            return [family]

        node.server.lifespan.state["metrics"].add_source(jobs)
        assert value(await scrape(node), "tidings_job_types_total", job="fanout") == 0
        done["fanout"] = 3
        assert value(await scrape(node), "tidings_job_types_total", job="fanout") == 3


@pytest.mark.redis
async def test_pubsub_link_losses_and_gap_repairs_are_counted(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis, token: Token
) -> None:
    """With the Redis backplane: a dropped pub/sub link and what history made up for show in /metrics."""
    settings = node_settings(redis_url=redis_url, key_prefix=key_prefix)
    async with run_node(settings) as node:
        listener = Connection(node.ws_url, token("listener"))
        await listener.connect(["room:gap"])
        try:
            backplane = node.server.lifespan.state["backplane"]
            await backplane.publish("room:gap", {"n": 1})
            await listener.publications("room:gap", timeout=5 * UNIT)
            name = redis_keys.client_name(key_prefix, settings.node_id, "pubsub")
            killed = 0
            for entry in await redis_client.client_list(_type="pubsub"):
                if entry.get("name") == name:
                    killed += await redis_client.client_kill_filter(_id=entry["id"])
            assert killed == 1
            for n in range(2, 5):  # published while the node's pub/sub link is down or coming back
                await backplane.publish("room:gap", {"n": n})
            got = [
                (await listener.publications("room:gap", timeout=10 * UNIT))["data"]["n"] for _ in range(3)
            ]
            assert got == [2, 3, 4]
            samples = await scrape(node)
        finally:
            await listener.close()
    assert value(samples, "tidings_pubsub_reconnects_total") >= 1
    assert value(samples, "tidings_pubsub_gap_repairs_total") >= 0  # present; how many depends on timing
    repaired = value(samples, "tidings_pubsub_repaired_publications_total")
    assert 0 <= repaired <= 3


async def test_notifications_and_jobs_are_counted() -> None:
    """A direct notification counts as delivered; a topic fan-out runs as a job and counts as done."""
    async with run_node(node_settings()) as node, httpx.AsyncClient(base_url=node.http_url) as http:
        headers = {"authorization": f"Bearer {API_KEY}"}
        before = await scrape(node)
        assert value(before, "tidings_jobs", state="pending") == 0
        assert value(before, "tidings_notifications_delivered_total") == 0
        for user in ("ann", "ben"):
            response = await http.put(f"/api/topics/deploys/subscribers/{user}", headers=headers)
            assert response.status_code == 200, response.text
        note = {"type": "deploy", "severity": "info", "title": "t", "body": "b"}
        assert (
            await http.post("/api/notifications", json={"users": ["ann"], **note}, headers=headers)
        ).is_success
        assert (
            await http.post("/api/notifications", json={"topic": "deploys", **note}, headers=headers)
        ).is_success

        async def fanned_out() -> bool:
            samples = await scrape(node)
            return value(samples, "tidings_jobs_ended_total", outcome="done") >= 1

        await wait_until(fanned_out, what="the topic fan-out job to finish")
        samples = await scrape(node)
    assert value(samples, "tidings_notifications_delivered_total") == 3  # ann, then ann and ben via the topic
    assert value(samples, "tidings_job_runs_total", outcome="done") >= 1
    assert value(samples, "tidings_job_runs_active") == 0
    assert value(samples, "tidings_notification_push_failures_total") == 0
