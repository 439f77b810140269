"""``tidings up``: embedded Valkey (or, with ``--shards``, a local Redis Cluster) plus nodes on one shared
port; Ctrl-C leaves nothing behind."""

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
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tidings.server.cli import main
from tidings.server.devcluster.resp import command
from tidings.server.devcluster.supervisor import LocalCluster
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


def stop_up(up: subprocess.Popen[bytes]) -> None:
    """Stop ``tidings up`` however the test ended: SIGTERM lets it stop its children and remove its
    data directory; SIGKILL (its children then get SIGTERM, but the directory stays) only if it hangs."""
    if up.poll() is None:
        up.terminate()
        try:
            up.wait(30 * UNIT)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


def readyz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2.0) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def cluster_info(port: int) -> dict[str, str]:
    reply = command(port, "CLUSTER", "INFO")
    assert isinstance(reply, str)
    return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def environ_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def seed_ports(url: str) -> list[int]:
    assert url.startswith("redis+cluster://"), url
    return sorted(int(seed.rsplit(":", 1)[1]) for seed in url.removeprefix("redis+cluster://").split(","))


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
            stop_up(up)


def test_up_refuses_replicas_without_shards_and_shards_with_a_url_of_its_own(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TIDINGS_REDIS_URL", raising=False)
    assert main(["up", "--replicas", "1"]) == 2
    assert "--replicas needs --shards" in capsys.readouterr().err
    monkeypatch.setenv("TIDINGS_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["up", "--shards", "3"]) == 2
    assert "unset TIDINGS_REDIS_URL" in capsys.readouterr().err


def test_up_with_shards_forms_a_redis_cluster_before_the_nodes_and_gives_them_its_url() -> None:
    """The supervisor's half of ``--shards``, with no node (their half is the test below)."""
    if find_server_binary() is None:
        missing_tool("no Valkey/Redis server binary")
    supervisor = LocalCluster(0, "127.0.0.1", 8000, {}, shards=3, replicas=1)
    try:
        supervisor.start()
        store = supervisor.redis_cluster
        assert store is not None and supervisor.valkey is None
        url = supervisor.environ["TIDINGS_REDIS_URL"]
        assert url == store.url and seed_ports(url) == sorted(node.port for node in store.primaries)
        assert len(store.primaries) == 3 and len(store.replicas) == 3
        assert all(cluster_info(node.port)["cluster_state"] == "ok" for node in store.nodes)
        assert f"local Redis Cluster of 3 primaries, 1 replica(s) each, data in {store.data_dir})" in (
            supervisor.describe()
        )
        pids, data_dir = [node.pid for node in store.nodes], store.data_dir
    finally:
        supervisor.stop()
    assert supervisor.redis_cluster is None and data_dir is not None and not Path(data_dir).exists()
    wait_until_sync(
        lambda: all(pid is not None and gone(pid) for pid in pids), what="every server to be gone"
    )


def test_up_with_shards_runs_the_nodes_on_a_local_redis_cluster() -> None:
    if find_server_binary() is None:
        missing_tool("no Valkey/Redis server binary")
    port = port_range(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    with tempfile.TemporaryFile() as output:
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tidings.server",
                "up",
                "--nodes",
                "2",
                "--shards",
                "3",
                "--port",
                str(port),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )

        def printed() -> str:
            output.seek(0)
            return output.read().decode(errors="replace")

        try:
            # The nodes start only once the cluster has formed: then up has 3 servers and 2 nodes.
            # A child counts as a node once it has exec'd (before, its command line is up's own).
            def serving() -> list[int]:
                return [pid for pid in children_of(up.pid) if "serve" in cmdline(pid)]

            wait_until_sync(
                lambda: (len(children_of(up.pid)) == 5 and len(serving()) == 2) or up.poll() is not None,
                timeout=30 * UNIT,
                what="the cluster and the nodes to start",
            )
            assert up.poll() is None, printed()
            started = children_of(up.pid)
            nodes = serving()
            assert len(nodes) == 2  # and 3 servers (their process title hides their arguments)
            (url,) = {environ_of(pid)["TIDINGS_REDIS_URL"] for pid in nodes}
            seeds = seed_ports(url)
            assert len(seeds) == 3
            for seed in seeds:  # three primaries of one formed cluster, and nothing else in it
                assert cluster_info(seed)["cluster_state"] == "ok"
                assert cluster_info(seed)["cluster_known_nodes"] == "3"

            wait_until_sync(
                lambda: (readyz(port + 1) and readyz(port + 2)) or up.poll() is not None,
                timeout=30 * UNIT,
                what="both nodes to answer /readyz",
            )
            assert up.poll() is None, printed()
            wait_until_sync(lambda: "Ctrl-C" in printed(), what="the URLs to be printed")
            data_dir = re.search(r"data in (\S+)\)", printed())
            assert data_dir is not None and Path(data_dir.group(1)).is_dir()

            up.send_signal(signal.SIGINT)
            assert up.wait(20 * UNIT) == 0, printed()
            wait_until_sync(lambda: all(gone(pid) for pid in started), what="every child to be gone")
            assert not Path(data_dir.group(1)).exists()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- tidings up printed:\n{printed()[-4000:]}") from exc
        finally:
            stop_up(up)
