"""What the job system exposes at ``/metrics``: the cluster's queue and this node's worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tidings.server.cluster.backplane import BackplaneUnavailable
from tidings.server.metrics import by_label, gauge

__all__ = ["JobMetrics"]


class JobMetrics:
    """Queue counts read from Redis before each scrape (``refresh``), and the local worker's runs.

    Args:
        queue: anything with ``async counts() -> JobCounts``.
        worker: the node's job worker, None when ``TIDINGS_JOBS=off``.
    """

    def __init__(self, queue: Any, worker: Any | None) -> None:
        self._queue = queue
        self._worker = worker
        self._counts: Any | None = None

    async def refresh(self) -> None:
        try:
            self._counts = await self._queue.counts()
        except BackplaneUnavailable:
            self._counts = (
                None  # the scrape still answers; tidings_backplane_ready says why these are missing
            )

    def collect(self) -> Iterator[Metric]:
        if self._counts is not None:
            yield by_label(
                GaugeMetricFamily,
                "tidings_jobs",
                "Jobs in the cluster's queue, by state (the same on every node).",
                "state",
                self._counts,
                ("pending", "running", "delayed"),
            )
            yield by_label(
                CounterMetricFamily,
                "tidings_jobs_ended",
                "Job runs that ended, cluster-wide: done, failed (each retry counts), dead (dead-lettered).",
                "outcome",
                self._counts,
                ("done", "failed", "dead"),
            )
        worker = self._worker
        if worker is not None:
            yield gauge("tidings_job_runs_active", "Jobs running on this node now.", worker.running)
            yield by_label(
                CounterMetricFamily,
                "tidings_job_runs",
                "Job runs on this node that ended: done, failed, lost (taken over by another node).",
                "outcome",
                worker.stats,
                ("done", "failed", "lost"),
            )
