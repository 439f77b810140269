"""Abuse limits: the pure rules (limits.py, drain planning), then each limit on a real node over real sockets.

Covered here: allowed origins, command rate (429 then 4029), connections per user and per node,
channels per connection, token expiry during a live connection, ping/pong timeout of a dead peer
(a real ``tidings serve`` process, so the CLI's uvicorn wiring is what is tested). The connect
timeout, the message size limit and garbage frames are covered in test_gateway.py and test_fuzz.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from loadtest.protocol_client import ProtocolClient
from tidings.client import Connection, ConnectionClosed
from tidings.server.gateway.auth import issue_token
from tidings.server.gateway.drain import plan_batches
from tidings.server.gateway.limits import (
    REJECTIONS_BEFORE_CLOSE,
    CommandLimiter,
    ConnectionLimits,
    TokenBucket,
    Verdict,
)

from .e2e.servers import E2E_JWT_SECRET, serve_node
from .support.node import SECRET, RunningNode, run_node
from .support.node import test_settings as node_settings
from .support.timing import UNIT, wait_until

Token = Callable[..., str]

# --- pure: token bucket -------------------------------------------------------------------------------


def test_bucket_allows_the_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=1.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_its_rate_and_never_beyond_the_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.take(0.0)
    assert not bucket.take(0.4)  # 0.8 tokens
    assert bucket.take(0.5)  # 1.0 token
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at the burst


def test_bucket_ignores_a_clock_that_goes_backwards() -> None:
    bucket = TokenBucket(rate=10.0, burst=1, now=5.0)
    assert bucket.take(5.0)
    assert not bucket.take(4.0) and not bucket.take(5.0)


@pytest.mark.parametrize("rate, burst", [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_bucket_refuses_nonsense(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, now=0.0)


def test_bucket_bound_holds_over_any_interval() -> None:
    """At most burst + rate * t takes succeed in t seconds, whatever the arrival pattern."""
    bucket = TokenBucket(rate=5.0, burst=4, now=0.0)
    granted = sum(bucket.take(i * 0.01) for i in range(1000))  # 10 s of a command every 10 ms
    assert granted <= 4 + 5.0 * 10


# --- pure: command limiter ----------------------------------------------------------------------------


def test_limiter_rejects_over_the_rate_then_closes_if_ignored() -> None:
    limiter = CommandLimiter(rate=1.0, burst=2, now=0.0)
    verdicts = [limiter.check(0.0) for _ in range(2 + REJECTIONS_BEFORE_CLOSE + 1)]
    assert verdicts[:2] == [Verdict.ALLOW] * 2
    assert verdicts[2:-1] == [Verdict.REJECT] * REJECTIONS_BEFORE_CLOSE
    assert verdicts[-1] is Verdict.CLOSE


def test_limiter_forgives_a_client_that_slows_down() -> None:
    limiter = CommandLimiter(rate=1.0, burst=1, now=0.0)
    assert limiter.check(0.0) is Verdict.ALLOW
    for _ in range(REJECTIONS_BEFORE_CLOSE):
        assert limiter.check(0.0) is Verdict.REJECT
    assert limiter.check(1.0) is Verdict.ALLOW  # it waited: the count of rejections starts over
    for _ in range(REJECTIONS_BEFORE_CLOSE):
        assert limiter.check(1.0) is Verdict.REJECT


# --- pure: connection limits --------------------------------------------------------------------------


def test_node_limit_counts_sockets() -> None:
    limits = ConnectionLimits(max_connections=2, max_user_connections=10)
    assert limits.open_socket() and limits.open_socket() and not limits.open_socket()
    limits.close_socket()
    assert limits.open_socket()
    assert limits.sockets == 2 and limits.accepted == 3 and limits.refused["node"] == 1


def test_handshake_limit_counts_sockets_not_yet_connected() -> None:
    limits = ConnectionLimits(max_connections=100, max_user_connections=10, max_handshakes=2)
    assert limits.begin_handshake() and limits.begin_handshake() and not limits.begin_handshake()
    limits.end_handshake()
    assert limits.begin_handshake()
    assert limits.handshakes == 2 and limits.refused["handshakes"] == 1


def test_user_limit_is_per_user_and_forgets_users_gone() -> None:
    limits = ConnectionLimits(max_connections=100, max_user_connections=2)
    assert limits.add_user("alice") and limits.add_user("alice") and not limits.add_user("alice")
    assert limits.add_user("bob")
    limits.remove_user("alice")
    assert limits.add_user("alice") and limits.user_connections("alice") == 2
    limits.remove_user("bob")
    assert limits.users == 1 and limits.refused["user"] == 1


# --- pure: drain pacing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, batch, interval, budget, expected",
    [
        (0, 100, 0.25, 10.0, (100, 0.0)),
        (50, 100, 0.25, 10.0, (100, 0.0)),  # one batch: no pause
        (250, 100, 0.25, 10.0, (100, 0.25)),  # fits as asked
        (10_000, 100, 0.25, 9.9, (100, 0.1)),  # 100 batches in 9.9 s: shorter pauses
        (100_000, 100, 0.25, 5.0, (200, 0.01)),  # too many for 10 ms pauses: bigger batches
        (500, 100, 0.25, 0.0, (500, 0.0)),  # no time left: everyone at once
    ],
)
def test_drain_batches_fit_the_budget(
    total: int, batch: int, interval: float, budget: float, expected: tuple[int, float]
) -> None:
    size, pause = plan_batches(total, batch_size=batch, interval=interval, budget=budget)
    assert size == expected[0] and pause == pytest.approx(expected[1])
    if total:
        batches = -(-total // size)
        assert (batches - 1) * pause <= budget + 1e-9


# --- live: helpers ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def socket_to(node: RunningNode, **kwargs: Any) -> AsyncIterator[ProtocolClient]:
    async with ProtocolClient.connecting(node.ws_url, timeout=5 * UNIT, **kwargs) as client:
        yield client


# --- live: origins ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "allowed, origin, accepted",
    [
        ((), None, True),  # not a browser: no Origin header
        ((), "http://evil.example", False),  # cross-site WebSocket hijacking
        ((), "SAME", False),  # equal to Host is not enough (DNS rebinding; test_origins.py)
        (("https://app.example",), "https://app.example", True),
        (("https://app.example",), "https://app.example.evil.example", False),
        (("*",), "http://anything.example", True),
    ],
)
async def test_browser_origins_are_checked(
    allowed: tuple[str, ...], origin: str | None, accepted: bool, token: Token
) -> None:
    """A browser's Origin must be listed in TIDINGS_ALLOWED_ORIGINS or name an allowed host (else HTTP 403)."""
    async with run_node(node_settings(allowed_origins=allowed)) as node:
        header = f"http://127.0.0.1:{node.port}" if origin == "SAME" else origin
        if accepted:
            async with socket_to(node, origin=header) as ws:  # type: ignore[arg-type]
                assert "result" in await ws.call("connect", token=token("alice"))
        else:
            with pytest.raises(InvalidStatus) as caught:
                async with socket_to(node, origin=header):  # type: ignore[arg-type]
                    pass
            assert caught.value.response.status_code == 403


# --- live: command rate -------------------------------------------------------------------------------


async def test_command_flood_gets_429_then_close_4029_and_others_are_unaffected(token: Token) -> None:
    """Over the rate: 429 (temporary) per command; ignoring that ends in close 4029 (reconnect later)."""
    async with run_node(node_settings(command_rate=0.1, command_burst=5)) as node:
        async with socket_to(node) as flooder, socket_to(node) as calm:
            assert "result" in await calm.call("connect", token=token("calm"))
            assert "result" in await flooder.call("connect", token=token("flooder"))
            for command_id in range(2, 2 + 4 + REJECTIONS_BEFORE_CLOSE + 1):
                await flooder.send({"id": command_id, "op": "ping"})
            code, seen = await flooder.closed()
            assert "result" in await calm.call("ping")
        replies = [m for m in seen if "id" in m]
        assert [m["id"] for m in replies if "result" in m] == [2, 3, 4, 5]  # the rest of the burst
        rejected = [m["error"] for m in replies if "error" in m]
        # Replies still queued when the close comes are dropped with the outbox; the counter has them all.
        assert 1 <= len(rejected) <= REJECTIONS_BEFORE_CLOSE
        assert all(e["code"] == 429 and e["temporary"] is True for e in rejected)
        assert code == 4029 and seen[-1] == {
            "push": "disconnect",
            "code": 4029,
            "reason": "rate limited: too many commands",
            "reconnect": True,
        }
        metrics = await _metrics(node)
        assert f"tidings_rate_limited_commands_total {REJECTIONS_BEFORE_CLOSE}.0" in metrics
        assert 'tidings_disconnects_total{code="4029"} 1.0' in metrics


async def _metrics(node: RunningNode) -> str:
    import httpx

    async with httpx.AsyncClient() as http:
        response = await http.get(f"{node.http_url}/metrics")
    assert response.status_code == 200
    return response.text


# --- live: connections per user and per node ----------------------------------------------------------


async def test_connections_per_user_are_limited_per_node(token: Token) -> None:
    async with (
        run_node(node_settings(max_user_connections=2)) as node,
        socket_to(node) as first,
        socket_to(node) as second,
        socket_to(node) as third,
    ):
        assert "result" in await first.call("connect", token=token("alice"))
        assert "result" in await second.call("connect", token=token("alice"))
        await third.send({"id": 1, "op": "connect", "token": token("alice")})
        code, seen = await third.closed()
        assert code == 4029 and seen[-1]["reason"] == "too many connections for this user"
        async with socket_to(node) as bob:  # another user is not affected
            assert "result" in await bob.call("connect", token=token("bob"))
        await first.close()
        state = node.server.lifespan.state
        await wait_until(lambda: state["runner"].limits.user_connections("alice") == 1, what="alice's count")
        async with socket_to(node) as again:
            assert "result" in await again.call("connect", token=token("alice"))


async def test_connections_per_node_are_limited_with_http_503(token: Token) -> None:
    """A full node refuses the handshake itself (HTTP 503), so a load balancer tries another node."""
    async with run_node(node_settings(max_connections=2)) as node, socket_to(node) as one, socket_to(node):
        with pytest.raises(InvalidStatus) as caught:
            async with socket_to(node):
                pass
        assert caught.value.response.status_code == 503
        await one.close()
        state = node.server.lifespan.state
        await wait_until(lambda: state["runner"].limits.sockets == 1, what="the socket to be released")
        async with socket_to(node) as again:
            assert "result" in await again.call("connect", token=token("alice"))


async def test_a_node_busy_with_connects_sheds_handshakes_with_503_and_retry_after(token: Token) -> None:
    """Sockets that have not connected yet count against TIDINGS_MAX_HANDSHAKES; connected ones do not."""
    async with (
        run_node(node_settings(max_handshakes=2)) as node,
        socket_to(node) as one,
        socket_to(node) as two,
    ):
        with pytest.raises(InvalidStatus) as caught:
            async with socket_to(node):
                pass
        assert caught.value.response.status_code == 503
        assert caught.value.response.headers["retry-after"] == "1"
        assert "result" in await one.call("connect", token=token("alice"))  # one is past its handshake
        state = node.server.lifespan.state
        await wait_until(lambda: state["runner"].limits.handshakes == 1, what="the handshake to end")
        async with socket_to(node) as three:
            assert "result" in await three.call("connect", token=token("bob"))
        await two.close()
        await wait_until(
            lambda: state["runner"].limits.handshakes == 0, what="a closed socket to end its handshake"
        )


# --- live: channels per connection --------------------------------------------------------------------


async def test_channels_per_connection_are_limited(token: Token) -> None:
    """The personal channel counts; one more subscription than allowed gets 400 and the session goes on."""
    async with run_node(node_settings(max_channels=3)) as node, socket_to(node) as ws:
        assert "result" in await ws.call("connect", token=token("alice"))
        assert "result" in await ws.call("subscribe", channel="room:a")
        assert "result" in await ws.call("subscribe", channel="room:b")
        refused = await ws.call("subscribe", channel="room:c")
        assert refused["error"]["code"] == 400 and "at most 3 channels" in refused["error"]["message"]
        assert "result" in await ws.call("unsubscribe", channel="room:a")
        assert "result" in await ws.call("subscribe", channel="room:c")


# --- live: token expiry -------------------------------------------------------------------------------


async def test_token_expiry_ends_a_live_session_and_the_client_does_not_reconnect(node: RunningNode) -> None:
    """At the token's exp the node closes with 4501; tidings.client then stops instead of retrying."""
    expires = time.time() + 1.0
    connection = Connection(node.ws_url, issue_token("alice", SECRET, ttl=expires - time.time()))
    await connection.connect()
    try:
        async with asyncio.timeout(5 * UNIT):
            while (push := await connection.recv())["push"] != "closed":
                pass
        assert push["code"] == 4501 and push["reason"] == "token expired"
        assert time.time() >= int(expires) - 0.1  # not before exp (whole seconds in the JWT)
        with pytest.raises(ConnectionClosed):
            await connection.ping()
    finally:
        await connection.close()


# --- live: ping/pong (a real `tidings serve`) ---------------------------------------------------------


def _handshake(port: int) -> socket.socket:
    """Open a WebSocket by hand: a peer that will never answer a ping (a dead peer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5 * UNIT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response[:80]
    return sock


def _read_until_eof(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the TCP connection (never answering its pings)."""
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept a dead peer open; got {received[:60]!r}")


async def test_dead_peer_is_dropped_after_ping_timeout_while_a_live_one_stays(tmp_path: Path) -> None:
    """TIDINGS_PING_INTERVAL/TIMEOUT reach uvicorn: a peer that never answers pings is cut off."""
    env = {"TIDINGS_PING_INTERVAL": "0.3", "TIDINGS_PING_TIMEOUT": "0.3", "TIDINGS_CONNECT_TIMEOUT": "30"}
    with serve_node("pinged", tmp_path, env=env) as served:
        dead = await asyncio.to_thread(_handshake, served.port)
        try:
            async with ProtocolClient.connecting(
                served.ws_url, timeout=5 * UNIT
            ) as alive:  # answers pings by itself
                assert "result" in await alive.call("connect", token=issue_token("bob", E2E_JWT_SECRET))
                started = time.monotonic()
                received = await asyncio.to_thread(_read_until_eof, dead, started + 5 * UNIT)
                assert received[0] == 0x89  # FIN + ping: the node asked before giving up
                assert time.monotonic() - started >= 0.3  # at least the ping timeout went by
                assert "result" in await alive.call("ping")  # the live peer was never dropped
        finally:
            dead.close()
