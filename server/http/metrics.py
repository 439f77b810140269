"""``GET /metrics``: the node in Prometheus text format (every name starts with ``tidings_``).

The per-delivery hot path stays free of metric calls: most numbers already exist
as plain attributes of the node's objects (``hub.deliveries``, the hub's
registry, the connection limits) and are read only when Prometheus scrapes, by
:class:`NodeCollector`. Events that leave no other trace (closes by code, 429s,
publish latency) are counted in :class:`NodeMetrics` with plain integer
arithmetic; nothing here takes a lock or allocates per delivery.

Jobs (queue counts read from the queue at each scrape, this node's worker runs) and
notifications (inbox adds, failed pushes) are read from the node state too.

Hooks for parts built elsewhere:
  * a backplane that counts pub/sub gap repairs exposes ``gap_repairs: int``
    (:class:`CountsGapRepairs`), and one whose pub/sub link can drop exposes
    ``link_reconnects`` and ``repaired`` (:class:`CountsLinkRecoveries`);
  * anything else registers a :data:`MetricSource` with :meth:`NodeMetrics.add_source`:
    a callable returning metric families, called at scrape time (e.g. per-job-type
    counts ``tidings_job_types_total{job, outcome}``).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.requests import Request
from starlette.responses import Response

from tidings.server.errors import StoreUnavailable
from tidings.server.gateway.connection import Connection

if TYPE_CHECKING:
    from tidings.server.jobs.queue import JobCounts
    from tidings.server.node_state import NodeState

__all__ = [
    "CountsGapRepairs",
    "CountsLinkRecoveries",
    "LatencyHistogram",
    "MetricSource",
    "NodeCollector",
    "NodeMetrics",
    "metrics_endpoint",
    "render",
]

MetricSource = Callable[[], Iterable[Metric]]
"""Called at scrape time; returns finished metric families (names start with ``tidings_``)."""

# Seconds. A pipelined publish to a local Redis takes well under a millisecond; a slow or remote one, tens.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@runtime_checkable
class CountsGapRepairs(Protocol):
    """A backplane that counts how often it read a pub/sub gap back from history."""

    gap_repairs: int


@runtime_checkable
class CountsLinkRecoveries(Protocol):
    """A backplane whose pub/sub link can drop: how often it came back, and what history made up for."""

    link_reconnects: int
    repaired: int


class LatencyHistogram:
    """Bucket counts for a latency, in seconds (pure; rendered as a Prometheus histogram)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # Prometheus buckets are "less than or equal": a value on a bound belongs to that bucket.
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs, cumulative, ending with ``+Inf`` (Prometheus' histogram shape)."""
        result: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            result.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return result


class NodeMetrics:
    """The event counters of one node that cannot be read off its objects at scrape time."""

    def __init__(self) -> None:
        self.publish_latency = LatencyHistogram()  # backplane publish, from command to position
        self.closes: Counter[int] = Counter()  # connections ended, by the close code the server sent
        self.dropped_frames = 0  # frames thrown away by closes (outbox full, or queued at close)
        self.rate_limited = 0  # commands answered 429
        self.sources: list[MetricSource] = []

    def connection_ended(self, close_code: int | None, dropped_frames: int) -> None:
        """Count one ended connection; ``close_code`` None means the peer went away first."""
        self.closes[close_code if close_code is not None else 0] += 1
        self.dropped_frames += dropped_frames

    def add_source(self, source: MetricSource) -> None:
        """Hook: ``source()`` is called at every scrape (jobs, notifications)."""
        self.sources.append(source)


class NodeCollector:
    """Reads one node's state at scrape time (a prometheus_client ``Collector``).

    Args:
        state: the node's lifespan state.
        jobs: the job queue's counts, read (asynchronously) just before; None if unavailable.
    """

    def __init__(self, state: NodeState, jobs: JobCounts | None = None) -> None:
        self.state = state
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        state = self.state
        hub, runner = state["hub"], state["runner"]
        metrics: NodeMetrics = runner.metrics
        limits = runner.limits
        node = state["settings"].node_id

        yield _gauge("tidings_up", "1 while the node runs; labelled with its id.", 1, node=node)
        yield _gauge(
            "tidings_draining", "1 while the node drains before exit.", int(state["draining"].is_set())
        )
        yield _gauge(
            "tidings_backplane_ready", "1 while the backplane is reachable.", int(state["backplane"].ready)
        )
        yield _gauge("tidings_connections", "Connected sessions on this node.", len(hub.connections))
        yield _gauge("tidings_sockets", "Open WebSockets on this node, connected or not yet.", limits.sockets)
        yield _gauge("tidings_users", "Distinct users connected to this node.", limits.users)
        yield _gauge("tidings_channels", "Channels with at least one local subscriber.", hub.channel_count)
        yield _gauge(
            "tidings_subscriptions",
            "Channel subscriptions of the connections on this node.",
            sum(len(connection.session.channels) for connection in _sessions(hub.connections.values())),
        )
        yield _counter("tidings_sockets_accepted", "WebSockets accepted.", limits.accepted)
        refused = CounterMetricFamily(
            "tidings_connections_refused", "Connections refused by a limit.", labels=["limit"]
        )
        for limit in ("node", "user"):
            refused.add_metric([limit], limits.refused[limit])
        yield refused
        closes = CounterMetricFamily(
            "tidings_disconnects",
            "Connections ended, by close code (0: the client went away; 4008: too slow).",
            labels=["code"],
        )
        for code, count in sorted(metrics.closes.items()):
            closes.add_metric([str(code)], count)
        yield closes
        yield _counter(
            "tidings_slow_disconnects",
            "Connections closed because their outbox was full.",
            metrics.closes[4008],
        )
        yield _counter("tidings_outbox_dropped_frames", "Frames dropped by closes.", metrics.dropped_frames)
        yield _counter("tidings_rate_limited_commands", "Commands answered 429.", metrics.rate_limited)
        yield _counter(
            "tidings_publications_received",
            "Publications handed to this node's hub by the backplane.",
            hub.publications,
        )
        yield _counter(
            "tidings_deliveries", "Publication frames queued for local subscribers.", hub.deliveries
        )
        latency = metrics.publish_latency
        yield _counter("tidings_publications_published", "Publications sent by this node.", latency.count)
        yield HistogramMetricFamily(
            "tidings_backplane_publish_seconds",
            "Time from a publish command to its position from the backplane.",
            buckets=latency.cumulative(),
            sum_value=latency.sum,
        )
        backplane = state["backplane"]
        if isinstance(backplane, CountsGapRepairs):
            yield _counter(
                "tidings_pubsub_gap_repairs",
                "Pub/sub gaps closed by reading history.",
                backplane.gap_repairs,
            )
        if isinstance(backplane, CountsLinkRecoveries):
            yield _counter(
                "tidings_pubsub_reconnects",
                "Times the pub/sub link came back after a loss.",
                backplane.link_reconnects,
            )
            yield _counter(
                "tidings_pubsub_repaired_publications",
                "Publications handed on from history because pub/sub missed them.",
                backplane.repaired,
            )
        yield from self._jobs_and_notifications()
        for source in metrics.sources:
            yield from source()

    def _jobs_and_notifications(self) -> Iterator[Metric]:
        state = self.state
        if self.jobs is not None:
            yield _by_label(
                GaugeMetricFamily,
                "tidings_jobs",
                "Jobs in the cluster's queue, by state (the same on every node).",
                "state",
                self.jobs,
                ("pending", "running", "delayed"),
            )
            yield _by_label(
                CounterMetricFamily,
                "tidings_jobs_ended",
                "Job runs that ended, cluster-wide: done, failed (each retry counts), dead (dead-lettered).",
                "outcome",
                self.jobs,
                ("done", "failed", "dead"),
            )
        worker = state["job_worker"]
        if worker is not None:
            yield _gauge("tidings_job_runs_active", "Jobs running on this node now.", worker.running)
            yield _by_label(
                CounterMetricFamily,
                "tidings_job_runs",
                "Job runs on this node that ended: done, failed, lost (taken over by another node).",
                "outcome",
                worker.stats,
                ("done", "failed", "lost"),
            )
        notifier = state["notifier"]
        yield _counter(
            "tidings_notifications_delivered",
            "Notifications added to inboxes by this node.",
            notifier.delivered,
        )
        yield _counter(
            "tidings_notification_push_failures",
            "Live notification pushes that failed (the inbox has the notification).",
            notifier.failed_pushes,
        )


def _sessions(subscribers: Iterable[object]) -> Iterator[Connection]:
    for subscriber in subscribers:
        if isinstance(subscriber, Connection):
            yield subscriber


def _gauge(name: str, documentation: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _by_label(
    family_type: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    documentation: str,
    label: str,
    source: object,
    attributes: tuple[str, ...],
) -> GaugeMetricFamily | CounterMetricFamily:
    """One family with a sample per attribute of ``source``, labelled by the attribute's name."""
    family = family_type(name, documentation, labels=[label])
    for attribute in attributes:
        family.add_metric([attribute], getattr(source, attribute))
    return family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    # prometheus_client appends "_total" to counter sample names.
    return CounterMetricFamily(name, documentation, value=value)


def render(state: NodeState, *, jobs: JobCounts | None = None) -> bytes:
    """The node's metrics in the Prometheus text format."""
    return generate_latest(NodeCollector(state, jobs))


async def metrics_endpoint(request: Request, state: NodeState) -> Response:
    """``GET /metrics`` (unauthenticated, like ``/healthz``: deploy/nginx.conf keeps it off the public listener)."""
    try:
        jobs = await state["jobs"].counts()
    except StoreUnavailable:
        jobs = None  # the scrape still answers; tidings_backplane_ready says why the job counts are missing
    return Response(render(state, jobs=jobs), media_type=CONTENT_TYPE_LATEST)
