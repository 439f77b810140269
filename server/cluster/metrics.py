"""What the backplane exposes at ``/metrics``: readiness, pub/sub link losses and gap repairs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from prometheus_client.core import Metric

from tidings.server.cluster.backplane import Backplane
from tidings.server.metrics import MetricSource, counter, gauge

__all__ = ["CountsGapRepairs", "CountsLinkRecoveries", "backplane_metrics"]


@runtime_checkable
class CountsGapRepairs(Protocol):
    """A backplane that counts how often it read a pub/sub gap back from history."""

    gap_repairs: int


@runtime_checkable
class CountsLinkRecoveries(Protocol):
    """A backplane whose pub/sub link can drop: how often it came back, and what history made up for."""

    link_reconnects: int
    repaired: int


def backplane_metrics(backplane: Backplane) -> MetricSource:
    """The backplane's families (the counters only where the implementation keeps them)."""

    def collect() -> Iterator[Metric]:
        yield gauge("tidings_backplane_ready", "1 while the backplane is reachable.", int(backplane.ready))
        if isinstance(backplane, CountsGapRepairs):
            yield counter(
                "tidings_pubsub_gap_repairs", "Pub/sub gaps closed by reading history.", backplane.gap_repairs
            )
        if isinstance(backplane, CountsLinkRecoveries):
            yield counter(
                "tidings_pubsub_reconnects",
                "Times the pub/sub link came back after a loss.",
                backplane.link_reconnects,
            )
            yield counter(
                "tidings_pubsub_repaired_publications",
                "Publications handed on from history because pub/sub missed them.",
                backplane.repaired,
            )

    return collect
