"""Metrics without I/O: event counters, a latency histogram, and the registry each component adds to.

The per-delivery hot path stays free of metric calls: most numbers already exist as plain
attributes of the node's parts (``hub.deliveries``, the connection limits, the job worker's
stats) and are read only when Prometheus scrapes. Each package says what it exposes in its own
``metrics.py`` (a :data:`MetricSource`), and ``node.start_node`` registers them; ``GET /metrics``
(``http/metrics.py``) only renders the registry. Events that leave no other trace (closes by
code, 429s, publish latency) are counted in :class:`NodeMetrics` with plain integer arithmetic;
nothing here takes a lock or allocates per delivery. Every name starts with ``tidings_``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = [
    "LatencyHistogram",
    "MetricSource",
    "MetricsRegistry",
    "NodeMetrics",
    "by_label",
    "counter",
    "gauge",
]

MetricSource = Callable[[], Iterable[Metric]]
"""Called at scrape time; returns finished metric families (names start with ``tidings_``)."""

Refresh = Callable[[], Awaitable[None]]
"""Called (awaited) before each scrape, for numbers that must be read from Redis first."""

# Seconds. A pipelined publish to a local Redis takes well under a millisecond; a slow or remote one, tens.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
    """The event counters of one node that cannot be read off its parts at scrape time."""

    def __init__(self) -> None:
        self.publish_latency = LatencyHistogram()  # backplane publish, from command to position
        self.closes: Counter[int] = Counter()  # connections ended, by the close code the server sent
        self.dropped_frames = 0  # frames thrown away by closes (outbox full, or queued at close)
        self.rate_limited = 0  # commands answered 429

    def connection_ended(self, close_code: int | None, dropped_frames: int) -> None:
        """Count one ended connection; ``close_code`` None means the peer went away first."""
        self.closes[close_code if close_code is not None else 0] += 1
        self.dropped_frames += dropped_frames


class MetricsRegistry:
    """What a node exposes at ``/metrics``: the sources its parts registered (a prometheus ``Collector``).

    Guarantee: sources are called in registration order at every scrape, after every refresh
    has finished; a refresh that fails is the refresh's business (it keeps its last numbers).
    """

    def __init__(self) -> None:
        self._sources: list[MetricSource] = []
        self._refreshes: list[Refresh] = []

    def add_source(self, source: MetricSource, *, refresh: Refresh | None = None) -> None:
        """Hook: ``source()`` is called at every scrape, after ``refresh()`` was awaited."""
        self._sources.append(source)
        if refresh is not None:
            self._refreshes.append(refresh)

    async def refresh(self) -> None:
        for refresh in self._refreshes:
            await refresh()

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source()


def gauge(name: str, documentation: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    # prometheus_client appends "_total" to counter sample names.
    return CounterMetricFamily(name, documentation, value=value)


def by_label(
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
