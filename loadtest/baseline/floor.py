"""The kernel floor: what one small write to a loopback TCP socket costs this machine, with no WebSocket code.

    python loadtest/baseline/floor.py server 1000 50 &   # writes 122 bytes to each of 1,000 sockets, 50 times/s
    python loadtest/baseline/floor.py client 1000 50     # opens the 1,000 sockets and reads what arrives

The server prints its CPU (user + system, from ``os.times``) per write. A gateway that sends
one frame per delivery cannot cost less per delivery than this, whatever its language
(``floor.js`` is the same server for Node). Both sides listen and connect on 127.0.0.1 only,
and stop by themselves after ``DURATION`` seconds.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time

import uvloop

PORT = 45999
DURATION = 10.0
PAYLOAD = b"\x81\x78" + b"x" * 120  # a 122-byte unmasked text frame, about a Tidings publication push


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class _Sink(asyncio.Protocol):
    received = 0

    def data_received(self, data: bytes) -> None:
        _Sink.received += len(data)


async def server(count: int, rate: float) -> None:
    transports: list[asyncio.Transport] = []
    all_in = asyncio.Event()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transports.append(transport)  # type: ignore[arg-type]  # uvloop's transports are not subclasses
            if len(transports) == count:
                all_in.set()

    listener = await asyncio.get_running_loop().create_server(Accept, "127.0.0.1", PORT)
    async with asyncio.timeout(60):
        await all_in.wait()
    before, started, writes = cpu_seconds(), time.monotonic(), 0
    due = started
    while time.monotonic() - started < DURATION:
        for transport in transports:
            transport.write(PAYLOAD)
        writes += len(transports)
        due += 1 / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    spent = cpu_seconds() - before
    user, system = os.times()[:2]
    print(
        f"server: {writes} writes, {spent / max(writes, 1) * 1e6:.2f} us of CPU per write "
        f"(user {user:.2f} s, system {system:.2f} s)"
    )
    listener.close()


async def client(count: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(count):
        await loop.create_connection(_Sink, "127.0.0.1", PORT)
    before = cpu_seconds()
    await asyncio.sleep(DURATION + 2)
    print(f"client: {_Sink.received} bytes, {cpu_seconds() - before:.2f} s of CPU")


def main() -> None:
    role, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    uvloop.run(server(count, rate) if role == "server" else client(count))


if __name__ == "__main__":
    main()
