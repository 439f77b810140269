"""What the gateway exposes at ``/metrics``: connections, subscriptions, fan-out and closes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from tidings.server.gateway.hub import Hub
from tidings.server.gateway.limits import ConnectionLimits
from tidings.server.metrics import MetricSource, NodeMetrics, counter, gauge

__all__ = ["gateway_metrics"]


def gateway_metrics(hub: Hub, limits: ConnectionLimits, events: NodeMetrics) -> MetricSource:
    """The gateway's families, read off ``hub``, ``limits`` and ``events`` at scrape time."""

    def collect() -> Iterator[Metric]:
        yield gauge("tidings_connections", "Connected sessions on this node.", len(hub.connections))
        yield gauge("tidings_sockets", "Open WebSockets on this node, connected or not yet.", limits.sockets)
        yield gauge("tidings_users", "Distinct users connected to this node.", limits.users)
        yield gauge("tidings_channels", "Channels with at least one local subscriber.", hub.channel_count)
        yield gauge(
            "tidings_subscriptions",
            "Channel subscriptions of the connections on this node.",
            hub.subscription_count,
        )
        yield counter("tidings_sockets_accepted", "WebSockets accepted.", limits.accepted)
        refused = CounterMetricFamily(
            "tidings_connections_refused", "Connections refused by a limit.", labels=["limit"]
        )
        for limit in ("node", "user", "handshakes"):
            refused.add_metric([limit], limits.refused[limit])
        yield refused
        yield from _closes(events)
        yield counter(
            "tidings_publications_received",
            "Publications handed to this node's hub by the backplane.",
            hub.publications,
        )
        yield counter(
            "tidings_deliveries", "Publication frames queued for local subscribers.", hub.deliveries
        )
        latency = events.publish_latency
        yield counter("tidings_publications_published", "Publications sent by this node.", latency.count)
        yield HistogramMetricFamily(
            "tidings_backplane_publish_seconds",
            "Time from a publish command to its position from the backplane.",
            buckets=latency.cumulative(),
            sum_value=latency.sum,
        )

    return collect


def _closes(events: NodeMetrics) -> Iterator[Metric]:
    closes = CounterMetricFamily(
        "tidings_disconnects",
        "Connections ended, by close code (0: the client went away; 4008: too slow).",
        labels=["code"],
    )
    for code, count in sorted(events.closes.items()):
        closes.add_metric([str(code)], count)
    yield closes
    yield counter(
        "tidings_slow_disconnects", "Connections closed because their outbox was full.", events.closes[4008]
    )
    yield counter("tidings_outbox_dropped_frames", "Frames dropped by closes.", events.dropped_frames)
    yield counter("tidings_rate_limited_commands", "Commands answered 429.", events.rate_limited)
