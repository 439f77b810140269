"""What notifications expose at ``/metrics``: inbox adds and failed live pushes of this node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import Metric

from tidings.server.metrics import MetricSource, counter

__all__ = ["notifier_metrics"]


def notifier_metrics(notifier: Any) -> MetricSource:
    """The notifier's families (``notifier`` has ``delivered`` and ``failed_pushes`` counters)."""

    def collect() -> Iterator[Metric]:
        yield counter(
            "tidings_notifications_delivered",
            "Notifications added to inboxes by this node.",
            notifier.delivered,
        )
        yield counter(
            "tidings_notification_push_failures",
            "Live notification pushes that failed (the inbox has the notification).",
            notifier.failed_pushes,
        )

    return collect
