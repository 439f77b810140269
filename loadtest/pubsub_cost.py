"""What Redis's CPU pays per publication and per subscribed connection it sends one to: the pub/sub floor.

    python -m loadtest.pubsub_cost                       # 0, 1, 2, 4, 8 and 16 subscribers, 1,000 msg/s
    python -m loadtest.pubsub_cost --subscribers 0 4 --rate 2000 --payload 1000

A Tidings node holds one pub/sub link per Redis server (per shard primary on a Cluster), so a
channel's publication costs Redis one message per *node* subscribed to it, whatever the
number of clients behind that node. This measures that cost apart from the publish script:
it starts an embedded Valkey (server/devcluster/valkey.py), opens ``k`` connections that
``SUBSCRIBE`` one channel and read everything, and ``PUBLISH``es ``--messages`` payloads of
``--payload`` bytes to it at ``--rate`` per second, one command at a time as they fall due
(as nodes spread over time publish, not pipelined into batches). Valkey's CPU comes from the
scheduler's runtime (procstat.runtime_of). Prints, for each ``k``, Valkey's CPU per
publication, then the least-squares line: the fixed cost of a publication and the cost of
each subscribed connection. Everything listens on 127.0.0.1; each step is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python loadtest/pubsub_cost.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.procstat import runtime_of
from tidings.server.devcluster.valkey import ValkeyServer

__all__ = ["fit", "main"]

STEP_TIMEOUT = 60.0  # seconds any one step (open, publish, drain) may take


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class _Counter(asyncio.Protocol):
    """A connection that counts the bytes it receives (replies or pushed messages)."""

    def __init__(self) -> None:
        self.received = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.received += len(data)


async def _until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish within {STEP_TIMEOUT:g} s")
        await asyncio.sleep(0.005)


async def _connect(port: int) -> _Counter:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Counter, "127.0.0.1", port)
    return protocol


async def measure(port: int, pid: int, subscribers: int, rate: float, messages: int, payload: int) -> float:
    """Valkey's CPU µs per publication to a channel with ``subscribers`` subscribed connections."""
    channel = b"pubsub-cost-%d" % subscribers
    readers = [await _connect(port) for _ in range(subscribers)]
    subscribe = _command(b"SUBSCRIBE", channel)
    for reader in readers:
        assert reader.transport is not None
        reader.transport.write(subscribe)
    confirmation = len(_command(b"subscribe", channel)) + len(b":1\r\n")  # the same framing, then :1
    await _until(lambda: all(r.received >= confirmation for r in readers), "subscribing")
    publisher = await _connect(port)
    assert publisher.transport is not None
    body = _command(b"PUBLISH", channel, b"x" * payload)
    reply = len(b":%d\r\n" % subscribers)
    message = len(_command(b"message", channel, b"x" * payload))  # a RESP2 push is framed like a command
    for reader in readers:
        reader.received = 0
    await asyncio.sleep(0.5)
    before = runtime_of([pid])
    start, sent = time.perf_counter(), 0
    while sent < messages:
        due = min(messages, int((time.perf_counter() - start) * rate) + 1)
        for _ in range(due - sent):
            publisher.transport.write(body)
        sent = due
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    await _until(
        lambda: (
            publisher.received >= messages * reply and all(r.received >= messages * message for r in readers)
        ),
        "publishing",
    )
    after = runtime_of([pid])
    for connection in (*readers, publisher):
        assert connection.transport is not None
        connection.transport.close()
    if not before or not after:
        raise RuntimeError("Valkey went away during the measurement")
    return (after[pid] - before[pid]) * 1e6 / messages


def fit(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``cost = fixed + per_subscriber * k`` over ``(k, cost)`` points: (fixed, per_subscriber)."""
    n = len(points)
    mean_k = sum(k for k, _ in points) / n
    mean_c = sum(c for _, c in points) / n
    spread = sum((k - mean_k) ** 2 for k, _ in points)
    slope = sum((k - mean_k) * (c - mean_c) for k, c in points) / spread if spread else 0.0
    return mean_c - slope * mean_k, slope


async def _run(args: argparse.Namespace) -> int:
    with ValkeyServer() as server:
        assert server.pid is not None
        points = []
        for k in args.subscribers:
            cost = await measure(server.port, server.pid, k, args.rate, args.messages, args.payload)
            points.append((k, cost))
            print(
                f"{k:>3} subscribed connection(s): {cost:7.2f} us of Valkey CPU per publication", flush=True
            )
    if len(points) >= 2:
        fixed, per_subscriber = fit(points)
        print(f"fit: {fixed:.2f} us per publication + {per_subscriber:.2f} us per subscribed connection")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16])
    parser.add_argument("--rate", type=float, default=1000.0, help="publications per second (1000)")
    parser.add_argument("--messages", type=int, default=5000, help="publications per step (5000)")
    parser.add_argument("--payload", type=int, default=300, help="bytes per publication (300)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or not 0 < args.messages <= 1_000_000 or min(args.subscribers) < 0:
        parser.error("--rate and --messages must be positive (messages at most 1,000,000), subscribers >= 0")
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(args))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
