"""The load-test harness: the fan-out verifier's accounting (pure), and real runs against real nodes.

The real runs start ``tidings serve`` processes on free ports and run locust (master and
workers) and ``loadtest/fanout.py`` as subprocesses, exactly as a person would. They take
a list of node URLs, so they run unchanged on a multi-node cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.bench.shards import balance_pct, shard_figures, shard_of_channel, shard_of_slot
from loadtest.benchkit import CpuSnapshot, latency_ms
from loadtest.ledger import (
    Inbox,
    Ledger,
    NotificationRecord,
    PublicationRecord,
    RangeSet,
    Subscription,
    verify,
)
from loadtest.processes import free_port
from loadtest.procstat import (
    listener_pids,
    parse_busy_ticks,
    parse_listening_inodes,
    parse_schedstat_ns,
    parse_stat_cpu_ticks,
    parse_stat_user_system_ticks,
    parse_vmrss_kib,
)
from loadtest.redis_cost import fit
from loadtest.report import render_chart, write_report
from loadtest.series import LatencyHistogram, TimeSeries
from tidings.server.cluster.backplane.slots import slot_of
from tidings.server.devcluster.redis_cluster import SLOTS

from .support.cluster import start_cluster
from .support.node import API_KEY, SECRET
from .support.timing import UNIT
from .support.tools import missing_tool

ROOT = Path(__file__).resolve().parent.parent


# --- RangeSet ----------------------------------------------------------------------------------------------


@given(st.lists(st.integers(min_value=0, max_value=200)))
def test_rangeset_behaves_like_a_set(values: list[int]) -> None:
    ranges, reference = RangeSet(), set()
    for value in values:
        assert ranges.add(value) == (value not in reference)
        reference.add(value)
    assert len(ranges) == len(reference)
    assert all(v in ranges for v in reference) and not any(
        v in ranges for v in range(-1, 202) if v not in reference
    )
    assert RangeSet.decode(ranges.encode()).encode() == ranges.encode()
    assert list(ranges.ranges()) == sorted(ranges.ranges())


def test_rangeset_keeps_consecutive_offsets_as_one_range() -> None:
    ranges = RangeSet()
    for offset in [*range(1, 1001), 1003, 1002, 1001]:
        ranges.add(offset)
    assert ranges.encode() == [1, 1003]


# --- the verifier ------------------------------------------------------------------------------------------


def _publications(channel: str, offsets: range, node: str, *, acked: float = 10.0) -> list[PublicationRecord]:
    return [PublicationRecord(channel, "e1", o, node, acked - 0.01, acked) for o in offsets]


def _subscription(channel: str, node: str, received: list[int], *, start: int = 0) -> Subscription:
    subscription = Subscription(channel, "e1", start, node)
    for offset in received:
        subscription.receive("e1", offset, node)
    return subscription


def _ledger(**parts: object) -> Ledger:
    ledger = Ledger(**parts)  # type: ignore[arg-type]
    ledger.snapshot_ts = 100.0
    return ledger


def test_every_owed_delivery_arrived_passes_with_counts_per_node_pair() -> None:
    ledger = _ledger(
        publications=_publications("room:a", range(1, 11), "A"),
        subscriptions=[
            _subscription("room:a", "A", list(range(1, 11))),
            _subscription("room:a", "B", list(range(1, 11))),
        ],
    )
    verdict = verify([ledger], drain=2)
    assert verdict.ok, verdict.failures()
    assert {k: (s.expected, s.delivered) for k, s in verdict.pairs.items()} == {
        ("A", "A"): (10, 10),
        ("A", "B"): (10, 10),
    }


def test_a_dropped_delivery_fails_the_run_on_its_node_pair() -> None:
    ledger = _ledger(
        publications=_publications("room:a", range(1, 11), "A"),
        subscriptions=[
            _subscription("room:a", "A", list(range(1, 11))),
            _subscription("room:a", "B", [1, 2, 4, 5, 6, 7, 8, 9]),
        ],
    )
    verdict = verify([ledger], drain=2)
    assert not verdict.ok
    assert verdict.pairs["A", "B"].lost == 2 and verdict.pairs["A", "A"].lost == 0
    assert verdict.failures() == ["2 deliveries lost"]
    assert "FAIL: 2 deliveries lost" in verdict.table()


def test_a_duplicate_fails_the_run_and_is_charged_to_the_receiving_node() -> None:
    subscription = _subscription("room:a", "B", [1, 2, 3])
    assert not subscription.receive("e1", 2, "B")
    assert not subscription.receive("e1", 0, "B")  # at or below the start: the reply already covered it
    verdict = verify(
        [_ledger(publications=_publications("room:a", range(1, 4), "A"), subscriptions=[subscription])],
        drain=2,
    )
    assert verdict.pairs["A", "B"].duplicates == 1 and verdict.pairs["?", "B"].duplicates == 1
    assert not verdict.ok


def test_out_of_order_deliveries_fail_the_run() -> None:
    subscription = _subscription("room:a", "A", [1, 3, 2])
    verdict = verify(
        [_ledger(publications=_publications("room:a", range(1, 4), "A"), subscriptions=[subscription])],
        drain=2,
    )
    assert verdict.reordered == 1 and verdict.total().lost == 0 and not verdict.ok


def test_publications_before_the_start_or_too_close_to_the_end_are_not_owed() -> None:
    publications = _publications("room:a", range(1, 6), "A") + _publications(
        "room:a", range(6, 8), "A", acked=99.0
    )
    subscription = _subscription("room:a", "A", [4, 5], start=3)
    verdict = verify([_ledger(publications=publications, subscriptions=[subscription])], drain=2)
    assert verdict.ok and verdict.total().expected == 2 and verdict.unverified == 2


def test_the_earliest_snapshot_bounds_what_is_owed() -> None:
    early = _ledger(publications=_publications("room:a", range(1, 3), "A", acked=50.0))
    early.snapshot_ts = 51.0
    late = _ledger(subscriptions=[_subscription("room:a", "B", [])])
    verdict = verify([early, late], drain=2)
    assert verdict.total().expected == 0 and verdict.unverified == 2


def test_after_a_reconnect_missing_offsets_are_charged_to_the_new_node() -> None:
    subscription = _subscription("room:a", "A", [1, 2, 3])
    subscription.resume(3, "B")
    for offset in (4, 6):
        subscription.receive("e1", offset, "B")
    verdict = verify(
        [_ledger(publications=_publications("room:a", range(1, 7), "C"), subscriptions=[subscription])],
        drain=2,
    )
    assert verdict.pairs["C", "A"].delivered == 3
    assert (verdict.pairs["C", "B"].delivered, verdict.pairs["C", "B"].lost) == (2, 1)


def test_ledgers_survive_the_trip_between_locust_workers_and_the_master() -> None:
    subscription = _subscription("room:a", "B", [1, 2, 4, 4])
    ledger = _ledger(
        publications=_publications("room:a", range(1, 5), "A"),
        subscriptions=[subscription],
        notifications=[NotificationRecord("k1", ("u1",), None, "A", 9.0, 10.0)],
        inboxes=[Inbox("u1", "B", 1.0, topics={"t"})],
        problems=["something"],
    )
    wire = msgpack.unpackb(msgpack.packb(ledger.encode(100.0)), strict_map_key=False)  # as locust sends it
    assert verify([Ledger.decode(wire)], drain=2).encode() == verify([ledger], drain=2).encode()


def test_notifications_are_owed_by_user_and_by_topic_from_when_the_inbox_listened() -> None:
    notifications = [
        NotificationRecord("to-user", ("u1",), None, "A", 10.0, 10.1),
        NotificationRecord("to-topic", (), "t", "A", 11.0, 11.1),
        NotificationRecord("before", ("u1",), None, "A", 0.5, 0.6),
        NotificationRecord("other-user", ("u2",), None, "A", 10.0, 10.1),
    ]
    inbox = Inbox("u1", "B", 1.0, topics={"t"})
    inbox.receive("to-user", "B")
    verdict = verify([_ledger(notifications=notifications, inboxes=[inbox])], drain=2)
    assert (verdict.pairs["A", "B"].expected, verdict.pairs["A", "B"].lost) == (2, 1)
    inbox.receive("to-topic", "B")
    inbox.receive("to-topic", "B")
    verdict = verify([_ledger(notifications=notifications, inboxes=[inbox])], drain=2)
    assert verdict.pairs["A", "B"].lost == 0 and verdict.pairs["A", "B"].duplicates == 1 and not verdict.ok


def test_a_reported_problem_or_an_empty_run_fails() -> None:
    assert (
        verify([_ledger(problems=["the notifications API is missing"])], drain=2)
        .failures()[0]
        .startswith("the")
    )
    assert "nothing was verified" in verify([_ledger()], drain=2).failures()[0]


# --- series, /proc, report ------------------------------------------------------------------------------


def test_histogram_quantiles_are_within_four_percent_and_merge() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    for i in range(1, 1001):
        (a if i % 2 else b).add(i / 10)
    a.merge(LatencyHistogram.decode(b.encode()))
    assert a.count == 1000 and a.max == 100.0
    assert abs(a.quantile(0.5) - 50.0) / 50.0 < 0.04 and abs(a.quantile(0.99) - 99.0) / 99.0 < 0.04


def test_cpu_figures_split_the_window_between_nodes_redis_bench_and_the_rest() -> None:
    before = CpuSnapshot(
        nodes={1: 10.0, 2: 20.0}, nodes_user_system=(25.0, 5.0), redis={9: 1.0}, bench=3.0, machine=100.0
    )
    after = CpuSnapshot(
        nodes={1: 12.0, 2: 23.0}, nodes_user_system=(28.0, 7.0), redis={9: 1.5}, bench=7.0, machine=112.0
    )
    figures = before.figures_until(after)
    assert figures["node_cpu_s"] == 5.0 and figures["node_cpu"] == {"1": 2.0, "2": 3.0}
    assert figures["redis_cpu"] == {"9": 0.5}
    assert (figures["node_user_s"], figures["node_sys_s"]) == (3.0, 2.0)
    assert (figures["redis_cpu_s"], figures["bench_cpu_s"], figures["others_cpu_s"]) == (0.5, 4.0, 2.5)
    gone = CpuSnapshot(nodes={}, nodes_user_system=(0.0, 0.0), redis={}, bench=7.0, machine=112.0)
    assert before.node_cpu_until(gone) is None  # a node died: no figure rather than a wrong one
    assert latency_ms([0.001, 0.002, 0.010]) == {"p50": 2.0, "p99": 10.0, "max": 10.0}


def test_proc_parsers_read_the_kernels_formats() -> None:
    stat = "1234 (tidings (node)) S 1 1234 1234 0 -1 4194560 5000 0 0 0 250 130 0 0 20 0 1 0 100 0 0"
    assert parse_stat_cpu_ticks(stat) == 380
    assert parse_stat_user_system_ticks(stat) == (250, 130)
    assert parse_vmrss_kib("Name:\tpython\nVmRSS:\t   59284 kB\nThreads:\t1\n") == 59284
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n"
        "   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n"
    )
    assert parse_listening_inodes(tcp, 8080) == {4242}
    assert parse_busy_ticks("cpu  100 5 20 900 7 0 3 2 0 0\ncpu0 50 2 10 450 3 0 1 1 0 0\n") == 130
    assert parse_schedstat_ns("121518356 89472336 313\n") == 121518356


def test_rooms_are_placed_on_the_shard_whose_even_slot_range_holds_their_pubsub_name() -> None:
    # The split LocalCluster makes: shard i of n serves i * 16384 // n .. (i + 1) * 16384 // n - 1.
    for shards in (1, 2, 3, 5, 16):
        for index in range(shards):
            first, last = index * SLOTS // shards, (index + 1) * SLOTS // shards - 1
            assert shard_of_slot(first, shards) == index == shard_of_slot(last, shards)
    assert [shard_of_slot(s, 3) for s in (0, 5460, 5461, 10921, 10922, 16383)] == [0, 0, 1, 1, 2, 2]
    # The hash tag decides: "<prefix>:{room:x}" hashes as "room:x", whatever the prefix.
    assert shard_of_channel("tidings", "room:x", 3) == shard_of_slot(slot_of("room:x"), 3)
    assert shard_of_channel("other", "room:x", 3) == shard_of_channel("tidings", "room:x", 3)


def test_the_redis_cost_line_splits_a_publication_from_each_subscribed_node() -> None:
    assert fit([(0, 10.0), (2, 14.0), (4, 18.0), (8, 26.0)]) == (10.0, 2.0)
    assert fit([(4, 30.0)]) == (30.0, 0.0)  # one point: no slope to speak of


def test_shard_figures_give_cpu_per_shard_per_own_publication_and_the_balance() -> None:
    rooms = [f"room:r{i}" for i in range(300)]
    figures = shard_figures("tidings", {room: 2 for room in rooms}, [11, 12, 13], {11: 0.5, 12: 0.4, 13: 0.6})
    shards = figures["shards"]
    assert figures["redis_shards"] == 3 and sum(s["rooms"] for s in shards) == 300
    assert [s["published"] for s in shards] == [2 * s["rooms"] for s in shards]
    assert [s["vs_mean_pct"] for s in shards] == [0.0, -20.0, 20.0]
    assert figures["shard_cpu_balance_pct"] == 50.0
    assert shards[0]["cpu_us_per_publication"] == round(0.5e6 / shards[0]["published"], 2)
    assert balance_pct([1.0, 1.15]) == 15.0 and balance_pct([0.0, 1.0]) is None
    # A server gone at either end of the window: no per-shard figure rather than a wrong balance.
    gone = shard_figures("tidings", {"room:a": 1}, [11, 12], {11: 0.5})
    assert gone["shard_cpu_balance_pct"] is None and gone["shards"][1]["cpu_s"] is None


def test_listener_pids_finds_the_process_listening_on_a_port() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert os.getpid() in listener_pids(sock.getsockname()[1])


def test_the_chart_is_valid_svg_with_the_verdict_and_every_pair(tmp_path: Path) -> None:
    ledger = _ledger(
        publications=_publications("room:a", range(1, 4), "node-a"),
        subscriptions=[_subscription("room:a", "node-b", [1, 3])],
    )
    verdict = verify([ledger], drain=2)
    series = TimeSeries()
    for second in range(5):
        series.add(1000.0 + second, "cross-node", 3.0 + second)
    svg = render_chart(verdict, series)
    ET.fromstring(svg)
    assert "FAIL: 1 deliveries lost" in svg and "1 / 3" in svg and "n2 = node-b" in svg
    chart, data = write_report(tmp_path, verdict, series)
    assert chart.exists() and json.loads(data.read_text())["lost"] == 1


# --- real runs -------------------------------------------------------------------------------------------


@dataclass
class Nodes:
    urls: list[str]
    pids: list[int]
    ids: list[str]


def _require_locust() -> Path:
    locust = Path(sys.executable).parent / "locust"
    if not locust.exists() and shutil.which("locust") is None:
        missing_tool("locust is not installed (pip install -e '.[test]')")
    return locust if locust.exists() else Path(str(shutil.which("locust")))


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10 * UNIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def nodes(redis_url: str) -> Iterator[Nodes]:
    """A real 3-node cluster on one Redis (its own key prefix), shared by this module's real runs."""
    # The benchmark publishes faster than a browser may: lift the per-connection command rate.
    limits = {"TIDINGS_COMMAND_RATE": "100000", "TIDINGS_COMMAND_BURST": "100000"}
    with start_cluster(
        3, redis_url=redis_url, key_prefix=f"lt-{uuid.uuid4().hex[:10]}", env=limits
    ) as cluster:
        yield Nodes(
            [node.http_url for node in cluster.nodes],
            [node.pid for node in cluster.nodes],
            [node.node_id for node in cluster.nodes],
        )


def _env() -> dict[str, str]:
    return {**os.environ, "TIDINGS_JWT_SECRET": SECRET, "TIDINGS_API_KEYS": API_KEY, "PYTHONUNBUFFERED": "1"}


def _fanout(nodes: Nodes, *args: str) -> tuple[int, dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.fanout", "--nodes", *nodes.urls, "--settle", "0.2", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
    )
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout.splitlines()[0])


@pytest.mark.redis
@pytest.mark.cluster
def test_fanout_bench_measures_deliveries_latency_cpu_and_memory_with_nothing_lost(nodes: Nodes) -> None:
    code, result = _fanout(nodes, "--connections", "60", "--rate", "40", "--duration", "2")
    assert code == 0, result
    assert (
        result["lost"] == 0 and result["duplicates"] == 0 and result["reordered"] == 0 and result["complete"]
    )
    assert result["deliveries"] == 60 * result["acked"] > 0  # type: ignore[operator]
    assert result["pids"] == nodes.pids
    assert result["node_cpu_s"] is not None and result["rss_kib_per_connection"] is not None
    assert result["latency_ms"]["p99"] > 0  # type: ignore[index]
    # One publisher, receivers on every node: a pair per receiving node, half of them across Redis.
    assert len(result["pairs"]) == len(nodes.urls)  # type: ignore[arg-type]
    assert all(pair["lost"] == 0 and pair["delivered"] > 0 for pair in result["pairs"].values())  # type: ignore[union-attr]


@pytest.mark.redis
@pytest.mark.cluster
def test_fanout_bench_bursts_and_many_rooms_lose_nothing(nodes: Nodes) -> None:
    code, burst = _fanout(nodes, "--connections", "40", "--rate", "0", "--window", "16", "--duration", "1.5")
    assert code == 0 and burst["lost"] == 0 and burst["duplicates"] == 0 and burst["publish_errors"] == 0
    assert burst["acked"] > 100 and burst["deliveries"] == 40 * burst["acked"]  # type: ignore[operator]
    code, rooms = _fanout(
        nodes,
        "--connections",
        "60",
        "--rooms",
        "12",
        "--publish-from",
        "members",
        "--rate",
        "2",
        "--duration",
        "1.5",
    )
    assert code == 0 and rooms["lost"] == 0 and rooms["publishers"] == 60 and rooms["members"] == 5


def _locust(
    nodes: Nodes,
    tmp_path: Path,
    *users: str,
    run_time: str,
    count: int,
    workers: int = 0,
    extra: tuple[str, ...] = (),
) -> tuple[int, dict[str, object], str]:
    """Run locust headless (with ``workers`` worker processes when > 0); return (exit code, verdict, output)."""
    locust = _require_locust()
    common = ["-f", str(ROOT / "loadtest" / "locustfile.py")]
    master_port = free_port()
    options = [
        *common,
        "--headless",
        "-u",
        str(count),
        "-r",
        str(count),
        "-t",
        run_time,
        "--nodes",
        ",".join(nodes.urls),
        "--report-dir",
        str(tmp_path),
        "--html",
        str(tmp_path / "run.html"),
        "--only-summary",
        *extra,
    ]
    if workers:
        options += ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port)]
        options += ["--expect-workers", str(workers)]
    worker_processes = [
        subprocess.Popen(
            [
                str(locust),
                *common,
                "--worker",
                "--master-host",
                "127.0.0.1",
                "--master-port",
                str(master_port),
            ],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        result = subprocess.run(
            [str(locust), *options, *users],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=90 * UNIT,
        )
    finally:
        for process in worker_processes:
            _stop(process)
    output = result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("TIDINGS-VERDICT ")]
    assert lines, output[-3000:]
    return result.returncode, json.loads(lines[-1].removeprefix("TIDINGS-VERDICT ")), output


@pytest.mark.redis
@pytest.mark.cluster
def test_locust_smoke_run_over_two_workers_loses_and_duplicates_nothing(nodes: Nodes, tmp_path: Path) -> None:
    code, verdict, output = _locust(
        nodes,
        tmp_path,
        "ChatUser",
        "ReconnectingChatUser",
        "BroadcastPublisher",
        "BroadcastListener",
        run_time="12s",
        count=40,
        workers=2,
        extra=("--chat-rate", "2", "--room-size", "5", "--reconnect-interval", "3", "--broadcast-rate", "5"),
    )
    assert code == 0, output[-3000:]
    assert verdict["ok"] and verdict["lost"] == 0 and verdict["duplicates"] == 0 and verdict["reordered"] == 0
    assert verdict["expected"] > 500 and verdict["subscriptions"] >= 39  # type: ignore[operator]  # all but the publisher
    # The storm really reconnected users (whether a reconnect missed anything, to be recovered, is timing).
    reconnects = re.search(r"ws\s+reconnect\s+(\d+)", output)
    assert reconnects is not None and int(reconnects.group(1)) > 0, output[-3000:]
    assert (tmp_path / "run.html").exists() and list(tmp_path.glob("tidings-*.svg"))
    assert "deliver" in output and "same-node" in output and "cross-node" in output
    crossing = [p for p in verdict["pairs"] if p["publisher"] != p["receiver"]]  # type: ignore[union-attr]
    assert len(nodes.ids) == 1 or (crossing and all(p["delivered"] > 0 for p in crossing))


@pytest.mark.redis
@pytest.mark.cluster
def test_a_run_where_a_receiver_drops_deliveries_fails(nodes: Nodes, tmp_path: Path) -> None:
    code, verdict, output = _locust(
        nodes,
        tmp_path,
        "LossyChatUser",
        run_time="5s",
        count=10,
        extra=("--chat-rate", "3", "--drop-share", "0.3", "--drop-node", "0"),
    )
    assert code == 1, output[-3000:]
    assert not verdict["ok"] and verdict["lost"] > 0 and verdict["duplicates"] == 0  # type: ignore[operator]
    assert any("deliveries lost" in f for f in verdict["failures"])  # type: ignore[union-attr]
    assert "FAIL:" in output
    # Only receivers on the dropping node lose anything: the verdict names the guilty pairs.
    losing = {p["receiver"] for p in verdict["pairs"] if p["lost"]}  # type: ignore[union-attr]
    assert losing == {nodes.ids[0]}


@pytest.mark.redis
@pytest.mark.cluster
def test_the_notifications_shape_verifies_or_says_the_api_is_missing(nodes: Nodes, tmp_path: Path) -> None:
    missing = httpx.post(
        f"{nodes.urls[0]}/api/notifications", json={}, headers={"Authorization": f"Bearer {API_KEY}"}
    ).status_code in (404, 405)
    code, verdict, output = _locust(
        nodes,
        tmp_path,
        "NotificationBackend",
        "NotifiedUser",
        run_time="4s",
        count=4,
        extra=("--notify-rate", "2"),
    )
    if missing:
        assert code == 1
        assert any("notifications API is missing" in f for f in verdict["failures"])  # type: ignore[union-attr]
    else:
        assert code == 0, output[-3000:]
        assert verdict["ok"] and verdict["notifications"] > 0  # type: ignore[operator]
