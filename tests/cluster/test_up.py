"""``tidings up --nodes 2``: embedded Valkey plus two nodes, one shared port; Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tidings.server.devcluster.valkey import find_server_binary

from ..support.cluster import healthz_node
from ..support.timing import UNIT, wait_until_sync
from ..support.tools import missing_tool

pytestmark = [pytest.mark.cluster, pytest.mark.redis]


def port_range(size: int) -> int:
    """A port P such that P .. P + size - 1 are free right now."""
    # Below the kernel's ephemeral range: `tidings up` opens Redis connections (and Valkey picks a
    # free port) while its nodes start, and either could otherwise land on P + 1 or P + 2.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        base = random.randrange(10_000, max(10_001, low - size))
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError("no free port range")


def healthz(port: int) -> str | None:
    return healthz_node(f"http://127.0.0.1:{port}", timeout=2.0)


def children_of(pid: int) -> list[int]:
    """Direct children (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status  # a zombie no longer runs; its parent (init) reaps it


def test_up_starts_two_nodes_on_a_shared_port_and_stops_cleanly_on_sigint() -> None:
    if find_server_binary() is None:
        missing_tool("no Valkey/Redis server binary")
    port = port_range(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}  # the embedded Valkey
    with tempfile.TemporaryFile() as output:
        up = subprocess.Popen(
            [sys.executable, "-m", "tidings.server", "up", "--nodes", "2", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )

        def printed() -> str:
            output.seek(0)
            return output.read().decode(errors="replace")

        try:
            wait_until_sync(
                lambda: (
                    (healthz(port + 1) == "node-1" and healthz(port + 2) == "node-2") or up.poll() is not None
                ),
                timeout=30 * UNIT,
                what="both nodes to answer /healthz",
            )
            assert up.poll() is None, printed()
            wait_until_sync(lambda: healthz(port) in ("node-1", "node-2"), what="the shared port to answer")
            wait_until_sync(lambda: "Ctrl-C" in printed(), what="the URLs to be printed")
            text = printed()
            assert f"http://127.0.0.1:{port}/" in text and "node-2" in text
            data_dir = re.search(r"data in (\S+)\)", text)
            assert data_dir is not None and Path(data_dir.group(1)).is_dir()
            started = children_of(up.pid)
            assert len(started) == 3  # Valkey and two nodes

            up.send_signal(signal.SIGINT)
            assert up.wait(20 * UNIT) == 0, printed()
            wait_until_sync(lambda: all(gone(pid) for pid in started), what="every child to be gone")
            assert not Path(data_dir.group(1)).exists()
            started_at = time.monotonic()
            wait_until_sync(lambda: healthz(port) is None, what="the shared port to close")
            assert time.monotonic() - started_at < 5 * UNIT
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- tidings up printed:\n{printed()[-4000:]}") from exc
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()
