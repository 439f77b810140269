"""Latency histograms and per-second time series that merge across processes (pure).

A :class:`LatencyHistogram` keeps counts in logarithmic buckets 4 % wide, so a
quantile read from it is within 4 % of the exact one, whatever the number of
samples; histograms of several locust workers add up bucket by bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LatencyHistogram", "TimeSeries"]

_BASE = 0.01  # ms: everything faster falls into bucket 0
_GROWTH = math.log(1.04)


@dataclass
class LatencyHistogram:
    """Latencies in milliseconds."""

    buckets: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    max: float = 0.0

    def add(self, ms: float) -> None:
        index = 0 if ms <= _BASE else 1 + int(math.log(ms / _BASE) / _GROWTH)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total += ms
        if ms > self.max:
            self.max = ms

    def merge(self, other: LatencyHistogram) -> None:
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) in ms: the upper edge of its bucket, never above the maximum."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(self.max, _BASE * math.exp(index * _GROWTH))
        return self.max

    def encode(self) -> dict[str, Any]:
        return {
            "b": [[i, n] for i, n in self.buckets.items()],
            "c": self.count,
            "t": self.total,
            "m": self.max,
        }

    @classmethod
    def decode(cls, data: dict[str, Any]) -> LatencyHistogram:
        return cls({int(i): int(n) for i, n in data["b"]}, int(data["c"]), float(data["t"]), float(data["m"]))


@dataclass
class TimeSeries:
    """Per whole second (Unix time): a latency histogram per kind of delivery (``same-node``, ``cross-node``...)."""

    seconds: dict[int, dict[str, LatencyHistogram]] = field(default_factory=dict)

    def add(self, ts: float, kind: str, ms: float) -> None:
        kinds = self.seconds.get(int(ts))
        if kinds is None:
            kinds = self.seconds[int(ts)] = {}
        histogram = kinds.get(kind)
        if histogram is None:
            histogram = kinds[kind] = LatencyHistogram()
        histogram.add(ms)

    def merge(self, other: TimeSeries) -> None:
        for second, kinds in other.seconds.items():
            mine = self.seconds.setdefault(second, {})
            for kind, histogram in kinds.items():
                mine.setdefault(kind, LatencyHistogram()).merge(histogram)

    def kinds(self) -> list[str]:
        return sorted({kind for kinds in self.seconds.values() for kind in kinds})

    def overall(self, kind: str | None = None) -> LatencyHistogram:
        """Everything merged, for one kind or all of them."""
        result = LatencyHistogram()
        for kinds in self.seconds.values():
            for name, histogram in kinds.items():
                if kind is None or name == kind:
                    result.merge(histogram)
        return result

    def encode(self) -> dict[str, Any]:
        return {str(s): {k: h.encode() for k, h in kinds.items()} for s, kinds in self.seconds.items()}

    @classmethod
    def decode(cls, data: dict[str, Any]) -> TimeSeries:
        return cls(
            {int(s): {k: LatencyHistogram.decode(h) for k, h in kinds.items()} for s, kinds in data.items()}
        )
