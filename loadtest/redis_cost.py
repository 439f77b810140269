"""Redis's CPU per publication, without nodes: the publish script and each subscribed node, at any rate.

    python -m loadtest.redis_cost                                 # one Valkey; the default sweeps below
    python -m loadtest.redis_cost --shards 3 --rates 1000 3000 9000 --nodes 2
    python -m loadtest.redis_cost --nodes 0 1 2 4 8 --rates 1000

The fan-out benchmark cannot load Redis much on a small machine: the nodes need ~0.6 ms of
CPU per publication, Redis a tenth of that. This drives Redis alone, the way nodes do:
``publish.lua`` (the very script, with the same keys and arguments) over ``--channels``
channels in turn, each publish sent to the server (the shard primary) that owns the
channel, one command as it falls due at the rate; and per shard, ``n`` connections
standing for ``n`` nodes, each subscribed (``SSUBSCRIBE`` on a Cluster) to every channel of
that shard and reading every message. With ``--shards`` above 1 it starts a local Redis
Cluster (server/devcluster/redis_cluster.py), otherwise one embedded Valkey.

For each (nodes, rate) step, for ``--seconds``, it prints each server's CPU (the
scheduler's runtime, procstat.runtime_of) per publication it served and as a share of a
core, and the total per publication; with several node counts at one rate, the line
through them: the fixed cost of a publication and the cost of each subscribed node. A step
fails if a reply or a delivery is missing. Everything listens on 127.0.0.1; every step is
bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python loadtest/redis_cost.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.bench.shards import shard_of_channel
from loadtest.procstat import runtime_of
from tidings.server.cluster.backplane import keys
from tidings.server.devcluster.redis_cluster import LocalCluster
from tidings.server.devcluster.valkey import ValkeyServer

__all__ = ["fit", "main"]

PREFIX = "cost"
PUBLISH_LUA = (Path(__file__).resolve().parent.parent / "server/cluster/backplane/publish.lua").read_bytes()
STEP_TIMEOUT = 60.0  # seconds opening, or draining one step, may take


def command(*args: bytes | str | int) -> bytes:
    """One RESP command."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class _Counter(asyncio.Protocol):
    """A connection that counts occurrences of ``token`` in what it receives (across reads)."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self.count = 0
        self._tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        data = self._tail + data
        self.count += data.count(self.token)
        self._tail = data[-(len(self.token) - 1) :]

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


async def _connect(port: int, token: bytes) -> _Counter:
    _, protocol = await asyncio.get_running_loop().create_connection(
        lambda: _Counter(token), "127.0.0.1", port
    )
    return protocol


async def _until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {STEP_TIMEOUT:g} s")
        await asyncio.sleep(0.005)


@dataclass
class Shard:
    port: int
    pid: int
    channels: list[str]
    publisher: _Counter | None = None


@dataclass(frozen=True)
class Target:
    shards: list[Shard]
    sharded: bool  # a Redis Cluster: SSUBSCRIBE and SPUBLISH
    sha: bytes  # publish.lua's SHA1, loaded on every shard


@dataclass
class Step:
    nodes: int
    rate: float
    published: list[int]  # per shard
    cpu_s: list[float]  # per shard
    seconds: float

    @property
    def us_per_publication(self) -> float:
        return sum(self.cpu_s) * 1e6 / sum(self.published)


async def run_step(target: Target, nodes: int, rate: float, seconds: float, payload: bytes) -> Step:
    """Publish at ``rate`` for ``seconds`` with ``nodes`` subscribed connections per shard."""
    subscribe = b"SSUBSCRIBE" if target.sharded else b"SUBSCRIBE"
    readers: list[tuple[int, _Counter]] = []
    for index, shard in enumerate(target.shards):
        for _ in range(nodes):
            # Counts "message" and "smessage" pushes; the (S)SUBSCRIBE replies end "subscribe\r\n".
            reader = await _connect(shard.port, b"message\r\n")
            reader.write(b"".join(command(subscribe, keys.channel_pubsub(PREFIX, c)) for c in shard.channels))
            readers.append((index, reader))
    await asyncio.sleep(0.5)
    publisher_of: dict[str, tuple[int, _Counter]] = {}
    bodies: dict[str, bytes] = {}
    for index, shard in enumerate(target.shards):
        assert shard.publisher is not None
        for channel in shard.channels:
            publisher_of[channel] = (index, shard.publisher)
            bodies[channel] = command(
                b"EVALSHA", target.sha, 2,
                keys.channel_meta(PREFIX, channel), keys.channel_stream(PREFIX, channel),
                keys.channel_pubsub(PREFIX, channel), payload,
                1000, 86_400_000, "e1",  # history size, history TTL (ms), the epoch of a new channel
                b"SPUBLISH" if target.sharded else b"PUBLISH",
                "",  # no run_id check
            )  # fmt: skip
    order = itertools.cycle(sorted(bodies))
    sent = [0] * len(target.shards)
    replies_before = [s.publisher.count if s.publisher is not None else 0 for s in target.shards]
    pids = [s.pid for s in target.shards]
    before = runtime_of(pids)
    start, published, total = time.perf_counter(), 0, int(rate * seconds)
    while published < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        for _ in range(due - published):
            channel = next(order)
            index, publisher = publisher_of[channel]
            publisher.write(bodies[channel])
            sent[index] += 1
        published = due
        await asyncio.sleep(max(0.0, start + published / rate - time.perf_counter()))

    def replied() -> bool:
        return all(
            s.publisher is not None and s.publisher.count - replies_before[i] >= sent[i]
            for i, s in enumerate(target.shards)
        )

    await _until(replied, "the publish replies")
    await _until(lambda: all(reader.count >= sent[i] for i, reader in readers), "the deliveries")
    after = runtime_of(pids)
    elapsed = time.perf_counter() - start
    for _, reader in readers:
        assert reader.transport is not None
        reader.transport.close()
    if len(before) != len(pids) or len(after) != len(pids):
        raise RuntimeError("a Redis server went away during the step")
    return Step(nodes, rate, sent, [after[p] - before[p] for p in pids], elapsed)


def fit(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``cost = fixed + per_node * n`` over ``(n, cost)`` points: (fixed, per_node)."""
    count = len(points)
    mean_n = sum(n for n, _ in points) / count
    mean_c = sum(c for _, c in points) / count
    spread = sum((n - mean_n) ** 2 for n, _ in points)
    slope = sum((n - mean_n) * (c - mean_c) for n, c in points) / spread if spread else 0.0
    return mean_c - slope * mean_n, slope


def _report(step: Step) -> str:
    per_shard = ", ".join(
        f"{cpu * 1e6 / max(1, count):.1f} us ({cpu / step.seconds * 100:.1f} % of a core)"
        for count, cpu in zip(step.published, step.cpu_s, strict=True)
    )
    return (
        f"nodes {step.nodes:>2} rate {step.rate:>6.0f}/s: {step.us_per_publication:7.2f} us of Redis CPU per "
        f"publication in all; each server, per publication it served: {per_shard}"
    )


async def _run(args: argparse.Namespace, servers: list[tuple[int, int]], sharded: bool) -> int:
    channels = [f"room:cost-{i}" for i in range(args.channels)]
    shards = [
        Shard(port, pid, [c for c in channels if shard_of_channel(PREFIX, c, len(servers)) == index])
        for index, (port, pid) in enumerate(servers)
    ]
    for shard in shards:
        shard.publisher = await _connect(shard.port, b"\r\n:")  # a reply ends "...\r\n:<offset>\r\n"
        loader = await _connect(shard.port, b"\r\n")
        loader.write(command(b"SCRIPT", b"LOAD", PUBLISH_LUA))
        await _until(lambda: loader.count >= 2, "SCRIPT LOAD")  # noqa: B023  # awaited right here
        assert loader.transport is not None
        loader.transport.close()
    target = Target(shards, sharded, hashlib.sha1(PUBLISH_LUA).hexdigest().encode())
    payload = b"x" * args.payload
    # A channel's first publication creates its keys: one each, unmeasured, before the steps.
    await run_step(target, 0, 2000.0, args.channels / 2000.0, payload)
    points = []
    for nodes in args.nodes:
        for rate in args.rates:
            step = await run_step(target, nodes, rate, args.seconds, payload)
            print(_report(step), flush=True)
            if len(args.rates) == 1:
                points.append((nodes, step.us_per_publication))
    if len(points) >= 2:
        fixed, per_node = fit(points)
        print(f"fit: {fixed:.2f} us per publication + {per_node:.2f} us per subscribed node", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shards", type=int, default=1, help="1: one Valkey (default); 2-16: a Redis Cluster"
    )
    parser.add_argument("--cluster", action="store_true", help="a Redis Cluster even with --shards 1")
    parser.add_argument("--nodes", type=int, nargs="+", default=[2], help="subscribed nodes per shard (2)")
    parser.add_argument("--rates", type=float, nargs="+", default=[1000.0], help="publications/s in all")
    parser.add_argument("--channels", type=int, default=1000, help="channels published to in turn (1000)")
    parser.add_argument("--payload", type=int, default=100, help="payload bytes (100)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per step (5)")
    args = parser.parse_args(argv)
    if not 1 <= args.shards <= 16 or min(args.nodes) < 0 or min(args.rates) <= 0 or args.channels < 1:
        parser.error("--shards 1-16, --nodes >= 0, --rates > 0, --channels >= 1")
    if not 0 < args.seconds <= 60 or max(args.rates) * args.seconds > 2_000_000:
        parser.error("--seconds up to 60, and at most 2,000,000 publications per step")
    sharded = args.shards > 1 or args.cluster
    with ExitStack() as stack:
        if sharded:
            cluster = stack.enter_context(LocalCluster(args.shards))
            primaries = sorted(cluster.primaries, key=lambda p: min(cluster.slots_of(p)))
            servers = [(p.port, p.pid) for p in primaries if p.pid is not None]
        else:
            server = stack.enter_context(ValkeyServer())
            assert server.pid is not None
            servers = [(server.port, server.pid)]
        try:
            import uvloop
        except ImportError:
            return asyncio.run(_run(args, servers, sharded))
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_run(args, servers, sharded))


if __name__ == "__main__":
    sys.exit(main())
