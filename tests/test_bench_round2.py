"""The measuring tools of issue 16 (connect storms): their pure parts, on sample text and frames."""

from __future__ import annotations

import json

import pytest

from loadtest.bench.connects import Closed, Refused, SocketIODialer, TidingsDialer, failure_reason
from loadtest.bench.redis_stats import CommandStats, parse_commandstats, parse_listening_ports
from loadtest.fastws import HandshakeError

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
