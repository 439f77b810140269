"""What the two fan-out benchmarks share, so that their figures compare.

``fanout.py`` (Tidings) and ``baseline/socketio_bench.py`` (socket.io) drive their servers
with the same publishing schedules and compute their figures the same way:

* :func:`publish_at_rate`: every publisher at ``rate`` messages per second, spread evenly
  over one schedule for all of them, caught up in batches when the bench falls behind.
* :func:`publish_windowed`: each publisher as fast as it is acknowledged, with ``window``
  publishes in flight (the caller releases ``publisher.window`` on each acknowledgement).

Both stop by ``until`` (a ``time.perf_counter()`` value).
"""

from __future__ import annotations

import asyncio
import itertools
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from loadtest.procstat import busy_seconds, cpu_of, runtime_of, user_system_seconds

__all__ = [
    "CpuSnapshot",
    "latency_ms",
    "ms",
    "own_cpu_seconds",
    "per",
    "publish_at_rate",
    "publish_for",
    "publish_windowed",
    "quantile",
    "raise_open_file_limit",
]

TICK = 0.005  # seconds: the shortest sleep of the rate schedule at high rates


class _Socket(Protocol):
    @property
    def close_code(self) -> int | None: ...


class _Publisher(Protocol):
    @property
    def ws(self) -> _Socket: ...

    window: asyncio.Semaphore | None


P = TypeVar("P", bound=_Publisher)


async def publish_at_rate(
    publishers: Sequence[P], rate: float, until: float, publish_one: Callable[[P], None]
) -> None:
    total_rate = rate * len(publishers)
    start = time.perf_counter()
    order = itertools.cycle(publishers)
    sent = 0
    while (now := time.perf_counter()) < until:
        due = int((now - start) * total_rate) + 1 - sent
        for _ in range(due):
            publish_one(next(order))
        sent += max(due, 0)
        delay = start + sent / total_rate - time.perf_counter()
        # Waking up costs the bench ~0.1 ms of CPU: above 200 msg/s in all, send in 5 ms batches.
        await asyncio.sleep(max(delay, TICK if total_rate * TICK > 1 else 0.0))


async def publish_windowed(
    publishers: Sequence[P], window: int, until: float, publish_one: Callable[[P], None]
) -> None:
    async def pump(publisher: P) -> None:
        publisher.window = asyncio.Semaphore(window)
        while (left := until - time.perf_counter()) > 0 and publisher.ws.close_code is None:
            try:
                async with asyncio.timeout(left):  # a closed publisher never frees its window
                    await publisher.window.acquire()
            except TimeoutError:
                break
            publish_one(publisher)

    await asyncio.gather(*(pump(p) for p in publishers))


async def publish_for(
    duration: float, publishers: Sequence[P], publish_one: Callable[[P], None], *, rate: float, window: int
) -> float:
    """Publish for ``duration`` seconds: at ``rate`` per publisher, or (``rate`` 0) ``window`` in flight.

    Returns the seconds spent publishing.
    """
    start = time.perf_counter()
    if rate > 0:
        await publish_at_rate(publishers, rate, start + duration, publish_one)
    else:
        await publish_windowed(publishers, window, start + duration, publish_one)
    return time.perf_counter() - start


def raise_open_file_limit(needed: int) -> None:
    """Raise this process's open-file limit to ``needed`` (children inherit it), or as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            print(f"open-file limit {hard} is below the {needed} the connections need", file=sys.stderr)


def own_cpu_seconds() -> float:
    """The bench's own CPU so far (user + system): near the wall time, the bench was the limit."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per(total: float, count: int) -> float | None:
    return round(total / count, 2) if count else None


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def latency_ms(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``latencies`` (seconds, sorted), in milliseconds."""
    return {
        "p50": ms(quantile(latencies, 0.50)),
        "p99": ms(quantile(latencies, 0.99)),
        "max": ms(latencies[-1] if latencies else 0.0),
    }


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far by the nodes, Redis, the bench and the whole machine."""

    nodes: dict[int, float]  # empty when a node is gone
    nodes_user_system: tuple[float, float]
    redis: dict[int, float]  # from the scheduler's runtime (procstat.runtime_of), not clock ticks
    bench: float
    machine: float

    @classmethod
    def take(cls, pids: list[int], redis_pids: list[int]) -> CpuSnapshot:
        try:
            split = user_system_seconds(pids)
        except OSError:
            split = (0.0, 0.0)
        # Redis to the nanosecond: a shard of a Redis Cluster uses a few tenths of a second in a run.
        return cls(cpu_of(pids), split, runtime_of(redis_pids), own_cpu_seconds(), busy_seconds())

    def node_cpu_until(self, after: CpuSnapshot) -> float | None:
        """The nodes' CPU seconds from this snapshot to ``after``; None if a node was gone at either."""
        if not self.nodes or not after.nodes:
            return None
        return sum(after.nodes.values()) - sum(self.nodes.values())

    def figures_until(self, after: CpuSnapshot) -> dict[str, Any]:
        """Where the CPU went between this snapshot and ``after``, as the benchmarks report it."""
        node_cpu = self.node_cpu_until(after)
        redis_cpu = sum(after.redis.values()) - sum(self.redis.values()) if self.redis else None
        bench_cpu = after.bench - self.bench
        return {
            "node_cpu_s": round(node_cpu, 3) if node_cpu is not None else None,
            "node_cpu": {
                str(p): round(after.nodes[p] - self.nodes[p], 3) for p in after.nodes if p in self.nodes
            },
            "node_user_s": round(after.nodes_user_system[0] - self.nodes_user_system[0], 3),
            "node_sys_s": round(after.nodes_user_system[1] - self.nodes_user_system[1], 3),
            "redis_cpu_s": round(redis_cpu, 3) if redis_cpu is not None else None,
            "redis_cpu": {
                str(p): round(after.redis[p] - self.redis[p], 3) for p in after.redis if p in self.redis
            },
            "bench_cpu_s": round(bench_cpu, 3),
            # Everything else the machine did meanwhile (other processes, the kernel's softirqs): when it
            # is large, the latency figures were taken on a busy machine.
            "others_cpu_s": round(
                (after.machine - self.machine) - bench_cpu - (node_cpu or 0.0) - (redis_cpu or 0.0), 2
            ),
        }
