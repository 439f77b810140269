"""One fan-out benchmark run, the same for every server, so that the figures compare.

The driver opens the connections (through the adapter), waits until the nodes are quiet,
publishes on :mod:`loadtest.benchkit`'s schedules, waits for the last deliveries, and
measures the nodes from /proc over that window. An adapter speaks one server's protocol:
it opens connections, sends one publish, reads deliveries and acknowledgements into the
run's :class:`Tally` and its :class:`Receiver` streams, and lays out the result.

    adapter.open_all()          connections, rooms, publishers, readers
    adapter.publish_one(p)      one publish of publisher ``p`` (the schedule calls it)
    adapter.delivered_all()     every publish acknowledged and every owed delivery arrived
    adapter.opening(Opening)    the result so far, in the adapter's own layout
    adapter.measured(Measured)  the figures of the publishing window
    adapter.closing()           what it still reports after measuring
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from loadtest.benchkit import CpuSnapshot, latency_ms, per, publish_for
from loadtest.fastws import FastWebSocket
from loadtest.procstat import cpu_of, rss_of

__all__ = [
    "Adapter",
    "DriverOptions",
    "Measured",
    "Opening",
    "Receiver",
    "Stream",
    "Tally",
    "add_run_arguments",
    "print_result",
    "run",
    "run_on_uvloop",
    "scenario_values",
]

RUN_OPTIONS = (
    "connections",
    "rooms",
    "publish_from",
    "rate",
    "window",
    "duration",
    "drain",
    "connect_concurrency",
    "max_settle",
    "redis_idle",
)


@dataclass
class DriverOptions:
    """What every server's run is made of (a scenario sets them; flags override)."""

    scenario: str = "custom"
    connections: int = 100
    rooms: int = 1
    publish_from: str = "dedicated"  # "dedicated": one extra connection per room; "members": every member
    rate: float = 50.0  # messages/s per publisher; 0 = as fast as acknowledged, with ``window`` in flight
    window: int = 16
    duration: float = 5.0
    drain: float = 10.0  # seconds to wait for the last deliveries
    idle: bool = False
    connect_concurrency: int = 100
    settle: float = 1.0  # at least this long between opening and measuring; then until the nodes are quiet
    max_settle: float = 120.0  # ... but no longer than this
    # Seconds of Redis CPU taken just before publishing (connections open, nodes quiet): Redis's own
    # background (heartbeats, job polling, a Cluster's bus), which the publishing window pays too.
    redis_idle: float = 0.0


class Tally:
    """What the adapter's callbacks record during a run: latencies, publishes, closes, other messages."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.published = 0
        self.first_publish = 0.0
        self.last_receipt = 0.0
        self.closed: dict[int, int] = {}  # close code -> connections the server closed with it
        self.other: dict[str, int] = {}  # messages that are neither deliveries nor acknowledgements, by kind

    def on_closed(self, code: int) -> None:
        self.closed[code] = self.closed.get(code, 0) + 1

    def count_other(self, kind: str) -> None:
        self.other[kind] = self.other.get(kind, 0) + 1


class Stream:
    """What one receiver has had of one ordered sequence (a room's offsets, a publisher's numbers)."""

    __slots__ = ("gaps", "highest")

    def __init__(self, start: int = 0) -> None:
        self.highest = start
        self.gaps: set[int] = set()

    def missing(self, last: int) -> set[int]:
        """The numbers up to ``last`` that have not arrived."""
        return self.gaps | set(range(self.highest + 1, last + 1))

    def has_all(self, last: int) -> bool:
        return self.highest >= last and not self.gaps


class Receiver:
    """One subscribed connection's accounting. A stream arrives in order: O(1) per delivery."""

    __slots__ = ("duplicates", "node", "received", "reordered", "room")

    def __init__(self, node: int, room: int) -> None:
        self.node = node
        self.room = room
        self.received = 0
        self.duplicates = 0
        self.reordered = 0

    def count(self, stream: Stream, number: int) -> bool:
        """Count one delivery of ``number``; False when it is a duplicate (or at/below the stream's start)."""
        self.received += 1
        if number > stream.highest:
            if number > stream.highest + 1:
                stream.gaps.update(range(stream.highest + 1, number))
            stream.highest = number
            return True
        if number in stream.gaps:
            stream.gaps.discard(number)
            self.reordered += 1
            return True
        self.duplicates += 1
        return False


@dataclass(frozen=True)
class Opening:
    """How opening the connections went."""

    open_s: float
    settle_s: float
    settled: bool
    rss_before: dict[int, int]
    rss_after: dict[int, int]
    connections: int

    @property
    def rss_kib_per_connection(self) -> float | None:
        """The nodes' RSS growth per connection; None when a node was gone before or after."""
        if not self.rss_before or not self.rss_after:
            return None
        return per(sum(self.rss_after.values()) - sum(self.rss_before.values()), self.connections)


@dataclass(frozen=True)
class Measured:
    """The publishing window: from the first publish until the last delivery (or ``drain``)."""

    publish_s: float
    complete: bool
    window_s: float
    node_cpu_s: float | None  # None when a node was gone at either end
    cpu: dict[str, Any]  # CpuSnapshot.figures_until: where the CPU went
    latency_ms: dict[str, float]
    published: int
    deliveries: int
    cpu_window_s: float = 0.0  # seconds between the two CPU snapshots
    redis_idle_cpu_per_s: dict[int, float] | None = None  # each Redis pid's CPU s/s before publishing

    @property
    def publish_rate(self) -> float:
        return round(self.published / self.publish_s, 1)

    @property
    def deliveries_per_s(self) -> float | None:
        return round(self.deliveries / self.window_s, 1) if self.window_s > 0 else None


class _Publisher(Protocol):
    @property
    def ws(self) -> FastWebSocket: ...

    window: asyncio.Semaphore | None


class Adapter(Protocol):
    """One server's side of the run (see the module docstring)."""

    tally: Tally
    sockets: list[FastWebSocket]
    pids: list[int]
    redis_pids: list[int]

    @property
    def publishers(self) -> Sequence[_Publisher]: ...

    async def open_all(self) -> None: ...

    def publish_one(self, publisher: Any) -> None: ...

    def delivered_all(self) -> bool: ...

    def deliveries(self) -> int: ...

    def opening(self, opening: Opening) -> dict[str, Any]: ...

    async def measured(self, measured: Measured) -> dict[str, Any]: ...

    def closing(self) -> dict[str, Any]: ...


async def run(adapter: Adapter, options: DriverOptions) -> dict[str, Any]:
    """Open, settle, (unless idle) publish and measure, close: the result in the adapter's layout."""
    pids = adapter.pids
    rss_before = rss_of(pids)
    opened = time.perf_counter()
    await adapter.open_all()
    open_s = time.perf_counter() - opened
    settled = time.perf_counter()
    quiet = await settle(pids, options.settle, options.max_settle)
    settle_s = time.perf_counter() - settled
    opening = Opening(
        round(open_s, 2), round(settle_s, 2), quiet, rss_before, rss_of(pids), len(adapter.sockets)
    )
    result = adapter.opening(opening)
    if not options.idle:
        result.update(await adapter.measured(await measure(adapter, options)))
    result.update(adapter.closing())
    for ws in adapter.sockets:
        ws.on_close = _ignore
        ws.close()
    await asyncio.sleep(0.2)  # let the close frames go out before the loop stops
    return result


async def measure(adapter: Adapter, options: DriverOptions) -> Measured:
    """Publish for ``duration``, wait for the deliveries (``drain`` at most), and take the figures."""
    tally = adapter.tally
    idle = await redis_idle(adapter.redis_pids, options.redis_idle) if options.redis_idle > 0 else None
    before = CpuSnapshot.take(adapter.pids, adapter.redis_pids)
    snapshot = time.perf_counter()
    tally.first_publish = time.perf_counter()
    publish_s = await publish_for(
        options.duration, adapter.publishers, adapter.publish_one, rate=options.rate, window=options.window
    )
    complete = await _until(adapter.delivered_all, options.drain)
    after = CpuSnapshot.take(adapter.pids, adapter.redis_pids)
    cpu_window_s = time.perf_counter() - snapshot
    window = max(tally.last_receipt, tally.first_publish + publish_s) - tally.first_publish
    return Measured(
        publish_s=publish_s,
        complete=complete,
        window_s=window,
        node_cpu_s=before.node_cpu_until(after),
        cpu=before.figures_until(after),
        latency_ms=latency_ms(sorted(tally.latencies)),
        published=tally.published,
        deliveries=adapter.deliveries(),
        cpu_window_s=cpu_window_s,
        redis_idle_cpu_per_s=idle,
    )


async def redis_idle(pids: list[int], seconds: float) -> dict[int, float] | None:
    """Each Redis pid's CPU seconds per second over ``seconds`` of quiet; None without pids or if one died."""
    if not pids:
        return None
    before, start = CpuSnapshot.take([], pids).redis, time.perf_counter()
    await asyncio.sleep(seconds)
    after, elapsed = CpuSnapshot.take([], pids).redis, time.perf_counter() - start
    if not before or not after:
        return None
    return {pid: (after[pid] - before[pid]) / elapsed for pid in pids}


async def settle(pids: list[int], at_least: float, at_most: float) -> bool:
    """Wait ``at_least`` seconds, then until the nodes use under 5 % of a core (or ``at_most``).

    Opening is not free for a node (presence ``join`` pushes to every member of a room,
    for one): measuring before that work is done would charge it to the deliveries.
    """
    await asyncio.sleep(at_least)
    deadline = time.perf_counter() + at_most
    while time.perf_counter() < deadline:
        before = cpu_of(pids)
        await asyncio.sleep(0.5)
        after = cpu_of(pids)
        if not before or not after:
            return False  # no pids: nothing to watch
        if sum(after.values()) - sum(before.values()) < 0.025:
            return True
    return False


async def _until(done: Callable[[], bool], limit: float) -> bool:
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        if done():
            return True
        await asyncio.sleep(0.01)
    return False


def _ignore(code: int) -> None:
    pass


# --- the command lines -------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of :data:`RUN_OPTIONS`, the same for every server."""
    parser.add_argument("--connections", type=int, help="subscribing connections (default 100)")
    parser.add_argument("--rooms", type=int, help="rooms; connections are split evenly (default 1)")
    parser.add_argument("--publish-from", choices=["dedicated", "members"])
    parser.add_argument(
        "--rate", type=float, help="msg/s per publisher; 0 = as fast as acknowledged (default 50)"
    )
    parser.add_argument(
        "--window", type=int, help="publishes in flight per publisher when --rate 0 (default 16)"
    )
    parser.add_argument("--duration", type=float, help="seconds of publishing (default 5)")
    parser.add_argument("--drain", type=float, help="seconds to wait for the last deliveries (default 10)")
    parser.add_argument("--connect-concurrency", type=int, help="handshakes in flight (default 100)")
    parser.add_argument(
        "--max-settle", type=float, help="seconds at most waiting for the nodes to go quiet (120)"
    )
    parser.add_argument(
        "--redis-idle",
        type=float,
        help="seconds measuring Redis's background CPU before publishing (default 0: not measured)",
    )


def scenario_values(
    scenarios: dict[str, dict[str, Any]], args: argparse.Namespace, names: Sequence[str]
) -> dict[str, Any]:
    """The scenario's preset, overridden by every flag of ``names`` that was given."""
    values: dict[str, Any] = dict(scenarios.get(args.scenario or "", {}))
    for name in names:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return values


def run_on_uvloop(main: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run the bench on uvloop when available (the bench must not be the bottleneck)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_call(main))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_call(main))


async def _call(main: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    return await main()


def print_result(result: dict[str, Any], table: Callable[[dict[str, Any]], str]) -> None:
    """One JSON line on stdout, the human table on stderr."""
    print(json.dumps(result, separators=(",", ":")), flush=True)
    print(table(result), file=sys.stderr, flush=True)
