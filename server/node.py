"""A node, put together in one place: :func:`start_node` builds and wires every part.

Nothing else constructs a node's parts or patches one into another: each part gets what it
needs when it is built, and registers what it shows at ``/metrics`` here. :class:`NodeState`
is the result, what every request and connection reaches through ``scope["state"]``.

Order matters where parts depend on each other at run time: the backplane starts before the
control plane subscribes; the job worker and the heartbeat start after the backplane, so that
the exit stack stops them first, while Redis and pub/sub still work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TypedDict

from prometheus_client.core import Metric

from tidings.server.cluster.backplane import Backplane, Publication
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.backplane.memory import InMemoryBackplane
from tidings.server.cluster.backplane.pipeline import Commands
from tidings.server.cluster.control import ControlPlane
from tidings.server.cluster.lease import Lease, LocalLease, RedisLease
from tidings.server.cluster.liveness import NodeLiveness, new_incarnation
from tidings.server.cluster.metrics import backplane_metrics
from tidings.server.cluster.nodes import NodeDirectory, RedisNodeDirectory
from tidings.server.cluster.presence import Presence
from tidings.server.cluster.presence_memory import InMemoryPresence
from tidings.server.cluster.presence_redis import RedisPresence
from tidings.server.cluster.redis_client import StoreClient, close_store_client, store_client
from tidings.server.cluster.rooms import CachedRooms
from tidings.server.cluster.rooms_memory import InMemoryRooms
from tidings.server.cluster.rooms_redis import RedisRooms
from tidings.server.config import Settings
from tidings.server.gateway.auth import TokenVerifier
from tidings.server.gateway.commands import CommandRunner
from tidings.server.gateway.connection import Gateway
from tidings.server.gateway.hub import Hub
from tidings.server.gateway.metrics import gateway_metrics
from tidings.server.jobs.metrics import JobMetrics
from tidings.server.jobs.queue import JobQueue
from tidings.server.jobs.queue_memory import InMemoryJobQueue
from tidings.server.jobs.queue_redis import RedisJobQueue
from tidings.server.jobs.worker import JobWorker
from tidings.server.metrics import MetricSource, MetricsRegistry, gauge
from tidings.server.notify.metrics import notifier_metrics
from tidings.server.notify.notifier import NOTIFY_JOB, Notifier
from tidings.server.notify.store import NotificationStore
from tidings.server.notify.store_memory import InMemoryNotificationStore
from tidings.server.notify.store_redis import RedisNotificationStore

__all__ = ["NodeState", "make_backplane", "start_node"]

logger = logging.getLogger("tidings.node")


class NodeState(TypedDict):
    settings: Settings
    backplane: Backplane
    hub: Hub
    runner: CommandRunner
    gateway: Gateway  # what serve_websocket needs of the node (settings, commands, client ids, flusher)
    presence: Presence
    rooms: CachedRooms
    control: ControlPlane
    notifier: Notifier
    jobs: JobQueue
    job_worker: JobWorker | None  # None: TIDINGS_JOBS=off
    draining: asyncio.Event  # set on shutdown: /readyz fails and new sockets are refused
    metrics: MetricsRegistry  # what /metrics shows: each part registered its own source
    nodes: NodeDirectory  # the live nodes and their numbers (GET /api/nodes)


async def start_node(
    settings: Settings, stack: contextlib.AsyncExitStack, *, backplane: Backplane | None = None
) -> NodeState:
    """Build and start every part of a node; ``stack`` stops them in reverse order.

    Args:
        backplane: use this one instead of the one ``settings`` describe (tests).
    """
    redis_client = _redis_client(settings, stack)
    node_backplane = backplane if backplane is not None else make_backplane(settings)
    incarnation = new_incarnation(settings.node_id)  # this process, distinct from any restart under the id
    commands = _pipelined_commands(node_backplane)
    presence, rooms = _membership(settings, redis_client, incarnation, commands)
    job_queue, promote_lease = _job_queue(settings, redis_client)
    notifier = Notifier(
        _notification_store(settings, redis_client, commands),
        job_queue,
        node_backplane,
        batch_size=settings.fanout_batch_size,
        batch_interval=settings.fanout_batch_interval,
    )
    hub = Hub(node_backplane)
    verifier = TokenVerifier(
        secret=settings.jwt_secret.reveal() if settings.jwt_secret else None,
        public_key=settings.jwt_public_key,
    )
    runner = CommandRunner(settings, node_backplane, hub, verifier, presence, rooms, notifier=notifier)
    control = ControlPlane(node_backplane, hub, rooms, drop_subscription=runner.drop_subscription)

    def on_publication(publication: Publication) -> None:
        if publication.kind == "control":
            control.handle(publication)
        else:
            hub.deliver(publication)

    await node_backplane.start(on_publication)
    stack.push_async_callback(node_backplane.close)
    await control.start()
    job_worker = await _start_job_worker(settings, notifier, job_queue, promote_lease, stack)
    nodes = _node_directory(settings, redis_client, incarnation, hub, runner)
    if redis_client is not None:
        await _start_liveness(settings, redis_client, presence, nodes, runner, stack)
    state: NodeState = {
        "settings": settings,
        "backplane": node_backplane,
        "hub": hub,
        "runner": runner,
        "gateway": Gateway(settings, runner, runner.metrics),
        "presence": presence,
        "rooms": rooms,
        "control": control,
        "notifier": notifier,
        "jobs": job_queue,
        "job_worker": job_worker,
        "draining": asyncio.Event(),
        "metrics": MetricsRegistry(),
        "nodes": nodes,
    }
    _register_metrics(state)
    return state


def make_backplane(settings: Settings) -> Backplane:
    """The backplane the settings ask for: Redis when ``redis_url`` is set, else in memory."""
    if settings.redis_url is None:
        return InMemoryBackplane(node_id=settings.node_id, policies=settings.history_policies())
    from tidings.server.cluster.backplane.redis import RedisBackplane  # imported only for a cluster node

    return RedisBackplane(
        settings.redis_url,
        node_id=settings.node_id,
        key_prefix=settings.key_prefix,
        policies=settings.history_policies(),
    )


def _redis_client(settings: Settings, stack: contextlib.AsyncExitStack) -> StoreClient | None:
    """The node's shared client for stores (the backplane keeps connections of its own)."""
    if settings.redis_url is None:
        return None
    client = store_client(settings.redis_url)
    stack.push_async_callback(close_store_client, client)
    return client


def _pipelined_commands(backplane: Backplane) -> Commands | None:
    """The Redis backplane's pipelined commands, which the stores' per-connect calls share: the
    calls of every connect in one event-loop turn go out in one round trip (per shard)."""
    from tidings.server.cluster.backplane.redis import RedisBackplane  # only when Redis is used

    return backplane.commands if isinstance(backplane, RedisBackplane) else None


def _membership(
    settings: Settings, client: StoreClient | None, incarnation: str, commands: Commands | None
) -> tuple[Presence, CachedRooms]:
    if client is None:
        return InMemoryPresence(), CachedRooms(InMemoryRooms())
    presence = RedisPresence(
        client, key_prefix=settings.key_prefix, incarnation=incarnation, commands=commands
    )
    return presence, CachedRooms(RedisRooms(client, key_prefix=settings.key_prefix))


def _notification_store(
    settings: Settings, client: StoreClient | None, commands: Commands | None
) -> NotificationStore:
    if client is None:
        return InMemoryNotificationStore(inbox_size=settings.inbox_size, inbox_ttl=settings.inbox_ttl)
    return RedisNotificationStore(
        client,
        key_prefix=settings.key_prefix,
        inbox_size=settings.inbox_size,
        inbox_ttl=settings.inbox_ttl,
        commands=commands,
    )


def _job_queue(settings: Settings, client: StoreClient | None) -> tuple[JobQueue, Lease]:
    """The job queue, and the lease under which one node at a time promotes due jobs."""
    if client is None:
        return InMemoryJobQueue(), LocalLease()
    # Released after every tick; the TTL only matters when the holder dies mid-tick (then due jobs
    # wait at most this long).
    lease = RedisLease(client, redis_keys.lease(settings.key_prefix, "job-promote"), ttl=2.0)
    return RedisJobQueue(client, key_prefix=settings.key_prefix), lease


async def _start_job_worker(
    settings: Settings, notifier: Notifier, queue: JobQueue, lease: Lease, stack: contextlib.AsyncExitStack
) -> JobWorker | None:
    """Start taking jobs, unless ``TIDINGS_JOBS=off``; ``stack`` hands running jobs back on stop."""
    if not settings.jobs:
        logger.info(
            "jobs are off on node %s (TIDINGS_JOBS=off): it enqueues but never runs them", settings.node_id
        )
        return None
    worker = JobWorker(
        queue,
        {NOTIFY_JOB: notifier.run_job},
        consumer=settings.node_id,
        lease=lease,
        visibility_timeout=settings.job_visibility_timeout,
        max_attempts=settings.job_max_attempts,
        retry_backoff=settings.job_retry_backoff,
    )
    await worker.start()
    stack.push_async_callback(worker.stop)
    return worker


def _node_directory(
    settings: Settings, client: StoreClient | None, incarnation: str, hub: Hub, runner: CommandRunner
) -> NodeDirectory:
    """The list of live nodes: this node's numbers, read off the hub and the close counters."""

    def stats() -> dict[str, int]:
        return {
            "connections": len(hub.connections),
            "channels": hub.channel_count,
            "subscriptions": hub.subscription_count,
            "published": runner.metrics.publish_latency.count,
            "publications": hub.publications,
            "deliveries": hub.deliveries,
            "slow_disconnects": runner.metrics.closes[4008],
        }

    if client is None:
        return NodeDirectory(settings.node_id, incarnation, stats)
    return RedisNodeDirectory(
        client, key_prefix=settings.key_prefix, node_id=settings.node_id, incarnation=incarnation, stats=stats
    )


async def _start_liveness(
    settings: Settings,
    client: StoreClient,
    presence: Presence,
    nodes: NodeDirectory,
    runner: CommandRunner,
    stack: contextlib.AsyncExitStack,
) -> None:
    """This process's heartbeat (with its stats), and its share of sweeping dead ones out of presence."""
    liveness = NodeLiveness(
        client,
        presence,
        key_prefix=settings.key_prefix,
        incarnation=nodes.incarnation,
        announce_leave=runner.announce_leave,
        on_revived=runner.readd_presence,
        stats=nodes.snapshot,
    )
    await liveness.start()
    stack.push_async_callback(liveness.stop)


def _register_metrics(state: NodeState) -> None:
    """Each part's own metrics source, in the order /metrics shows them."""
    registry, runner = state["metrics"], state["runner"]
    registry.add_source(_node_metrics(state))
    registry.add_source(backplane_metrics(state["backplane"]))
    registry.add_source(gateway_metrics(state["hub"], runner.limits, runner.metrics))
    jobs = JobMetrics(state["jobs"], state["job_worker"])
    registry.add_source(jobs.collect, refresh=jobs.refresh)
    registry.add_source(notifier_metrics(state["notifier"]))


def _node_metrics(state: NodeState) -> MetricSource:
    """The node as a whole: its id, and whether it drains."""

    def collect() -> Iterator[Metric]:
        node = state["settings"].node_id
        yield gauge("tidings_up", "1 while the node runs; labelled with its id.", 1, node=node)
        yield gauge(
            "tidings_draining", "1 while the node drains before exit.", int(state["draining"].is_set())
        )

    return collect
