"""Three real nodes behind real nginx running deploy/nginx.conf: spread, cross-node delivery, rolling drain.

nginx is the Debian package's binary with its own prefix, pid file, logs and temp dirs
(tests/support/nginx.py); without it this test skips locally and FAILS in CI. Clients
only know nginx's URL, as browsers behind a load balancer do.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tidings.client import Connection
from tidings.server.gateway.auth import issue_token

from ..support.cluster import Cluster, NodeProcess, start_cluster
from ..support.nginx import Nginx, run_nginx
from ..support.node import API_KEY, SECRET
from ..support.timing import UNIT, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.redis]

DRAIN_TIMEOUT = 6.0
NODE_ENV = {
    "TIDINGS_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
    "TIDINGS_DRAIN_BATCH_SIZE": "4",
    "TIDINGS_DRAIN_INTERVAL": "0.1",
}


@dataclass
class Balanced:
    cluster: Cluster
    nginx: Nginx
    key_prefix: str


@pytest.fixture
def balanced(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Balanced]:
    with start_cluster(3, redis_url=redis_url, key_prefix=key_prefix, env=NODE_ENV) as cluster:
        upstreams = [f"127.0.0.1:{node.port}" for node in cluster.nodes]
        with run_nginx(tmp_path / "nginx", upstreams) as nginx:
            yield Balanced(cluster, nginx, key_prefix)


@dataclass
class Subscriber:
    """A tidings.client connection through nginx that records everything it is handed."""

    connection: Connection
    channel: str
    seen: list[tuple[str, int, Any]] = field(default_factory=list)  # (epoch, offset, data)
    events: list[dict[str, Any]] = field(default_factory=list)  # reconnecting, reconnected, unrecovered...
    task: asyncio.Task[None] | None = None

    async def consume(self) -> None:
        while True:
            push = await self.connection.recv()
            kind = push.get("push")
            if kind == "publication" and push.get("channel") == self.channel and "offset" in push:
                self.seen.append((push["epoch"], push["offset"], push["data"]))
            elif kind != "publication":
                self.events.append(push)
                if kind == "closed":
                    return

    def count(self, kind: str) -> int:
        return sum(1 for event in self.events if event.get("push") == kind)

    @property
    def settled(self) -> bool:
        """Connected (not between a loss and the next session)."""
        return self.count("reconnecting") == self.count("reconnected")


@contextlib.asynccontextmanager
async def subscribers(url: str, channel: str, count: int) -> AsyncIterator[list[Subscriber]]:
    opened: list[Subscriber] = []
    try:
        for i in range(count):
            connection = Connection(url, issue_token(f"user{i}", SECRET), min_backoff=0.05, max_backoff=1.0)
            subscriber = Subscriber(connection, channel)
            opened.append(subscriber)
            await connection.connect([channel])
            subscriber.task = asyncio.get_running_loop().create_task(subscriber.consume())
        yield opened
    finally:
        for subscriber in opened:
            await subscriber.connection.close()
            if subscriber.task is not None:
                subscriber.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await subscriber.task


async def publish(http: httpx.AsyncClient, channel: str, data: Any) -> dict[str, Any]:
    response = await http.post(
        "/api/publish",
        json={"channel": channel, "data": data},
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def history(http: httpx.AsyncClient, channel: str) -> list[tuple[str, int, Any]]:
    response = await http.get(
        f"/api/channels/{channel}/history",
        params={"limit": 1000},
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    return [(p["epoch"], p["offset"], p["data"]) for p in response.json()["publications"]]


def node_ids(subscribers: list[Subscriber]) -> Counter[str]:
    return Counter(str(subscriber.connection.node) for subscriber in subscribers)


# --- spread and cross-node delivery -------------------------------------------------------------------


async def test_nginx_spreads_connections_over_all_nodes_and_delivery_crosses_them(balanced: Balanced) -> None:
    channel = f"room:spread-{uuid.uuid4().hex[:6]}"
    async with subscribers(balanced.nginx.ws_url, channel, 12) as clients:
        spread = node_ids(clients)
        assert set(spread) == {"node-1", "node-2", "node-3"}, spread
        assert max(spread.values()) - min(spread.values()) <= 2, spread  # least_conn: even, give or take
        # One client publishes over its socket; a backend publishes over HTTP through nginx.
        await clients[0].connection.publish(channel, {"from": "socket"})
        async with httpx.AsyncClient(base_url=balanced.nginx.http_url, timeout=5 * UNIT) as http:
            await publish(http, channel, {"from": "http"})
            await wait_until(
                lambda: all(len(c.seen) == 2 for c in clients), what="both publications everywhere"
            )
            assert all(
                [data for _, _, data in c.seen] == [{"from": "socket"}, {"from": "http"}] for c in clients
            )
            # The public listener does not expose node internals; /readyz goes through.
            assert (await http.get("/metrics")).status_code == 404
            assert (await http.get("/readyz")).json()["ready"] is True


# --- rolling drain ------------------------------------------------------------------------------------


async def healthy(node: NodeProcess) -> None:
    async with httpx.AsyncClient(timeout=UNIT) as http:

        async def answers() -> bool:
            assert node.alive(), node.log_tail()
            with contextlib.suppress(httpx.HTTPError):
                return (await http.get(f"{node.http_url}/readyz")).status_code == 200
            return False

        await wait_until(answers, timeout=20 * UNIT, what=f"{node.node_id} to be ready")


async def lands_on(url: str, node_id: str) -> bool:
    """Whether a new connection through nginx lands on ``node_id`` now (nginx has taken it back)."""
    connection = Connection(url, issue_token("probe", SECRET), reconnect=False)
    try:
        await connection.connect()
        return connection.node == node_id
    except OSError:
        return False
    finally:
        await connection.close()


async def test_rolling_drain_of_every_node_under_traffic_loses_nothing(balanced: Balanced) -> None:
    """Each node in turn: SIGTERM (drain), exit 0 in time, restart on its port. Every subscriber ends
    up with exactly the channel's history, in order: no gap, no duplicate, nothing unrecovered."""
    cluster, channel = balanced.cluster, f"room:roll-{uuid.uuid4().hex[:6]}"
    acknowledged: list[int] = []
    failures: Counter[str] = Counter()
    stop = asyncio.Event()

    async def traffic(http: httpx.AsyncClient) -> None:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            try:
                acknowledged.append((await publish(http, channel, {"seq": sequence}))["offset"])
            except (AssertionError, httpx.HTTPError) as exc:
                # A POST nginx could not place; it may or may not have been published.
                failures[" ".join(str(exc).split())[:100]] += 1
            await asyncio.sleep(0.02)

    async with (
        subscribers(balanced.nginx.ws_url, channel, 15) as clients,
        httpx.AsyncClient(base_url=balanced.nginx.http_url, timeout=5 * UNIT) as http,
    ):
        assert set(node_ids(clients)) == {"node-1", "node-2", "node-3"}
        publisher = asyncio.get_running_loop().create_task(traffic(http))
        try:
            await wait_until(lambda: len(acknowledged) >= 20, what="traffic to flow")
            for index, old in enumerate(list(cluster.nodes)):
                had = [c for c in clients if c.connection.node == old.node_id]
                started = time.monotonic()
                old.process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(old.process.wait, DRAIN_TIMEOUT + 10 * UNIT)
                except subprocess.TimeoutExpired as exc:
                    raise AssertionError(
                        f"{old.node_id} did not exit after SIGTERM:\n{old.log_tail()}"
                    ) from exc
                assert old.process.returncode == 0, old.log_tail()
                assert time.monotonic() - started < DRAIN_TIMEOUT + 2 * UNIT
                before = len(acknowledged)
                await wait_until(
                    lambda old=old: all(c.settled and c.connection.node != old.node_id for c in clients),  # type: ignore[misc]
                    timeout=15 * UNIT,
                    what=f"the clients of {old.node_id} to move",
                )
                assert all(any(e.get("code") == 4001 for e in c.events) for c in had), "told with 4001"
                cluster.restart(index, f"{old.node_id}-again")
                await healthy(cluster.nodes[index])
                # As a rolling restart must: the next node drains only once nginx sends traffic here
                # again (passive checks keep a failed node out for fail_timeout, 3 s).
                new_id = cluster.nodes[index].node_id
                await wait_until(
                    lambda new_id=new_id: lands_on(balanced.nginx.ws_url, new_id),  # type: ignore[misc]
                    timeout=10 * UNIT,
                    what=f"nginx to send connections to {new_id}",
                )
                await wait_until(
                    lambda before=before: len(acknowledged) > before + 10, what="traffic to go on"
                )  # type: ignore[misc]
        finally:
            stop.set()
            await publisher

        published = await history(http, channel)
        top = published[-1][1]
        await wait_until(
            lambda: all(c.seen and c.seen[-1][1] >= top for c in clients),
            timeout=15 * UNIT,
            what="every subscriber to catch up",
        )
    assert [offset for _, offset, _ in published] == list(range(1, top + 1))
    assert set(acknowledged) <= {offset for _, offset, _ in published}
    for client in clients:
        assert client.seen == published, f"{client.connection.info.get('user')}: lost, repeated or reordered"
        assert client.count("unrecovered") == 0 and client.count("closed") == 0
        assert client.connection.reconnects >= 1  # every node was drained, so everyone moved at least once
    # Traffic kept flowing; a POST in flight while its node went away may fail, never many.
    assert len(acknowledged) > 60 and sum(failures.values()) <= 10, (len(acknowledged), failures)
    for node in cluster.nodes:
        assert "Traceback" not in node.log_tail(100_000), node.log_tail()
