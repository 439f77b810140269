"""One real node end to end: uvicorn on a free port, real WebSocket clients, in JSON and in MessagePack."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from loadtest.protocol_client import ProtocolClient
from tidings.client import Connection, ConnectionClosed
from tidings.server.gateway.connection import Connection as ServerConnection
from tidings.server.gateway.protocol import Codec
from tidings.server.node import NodeState

from .support.node import API_KEY, SECRET, RunningNode, run_node
from .support.node import test_settings as node_settings
from .support.timing import UNIT, wait_until


@pytest.fixture(params=[Codec.JSON, Codec.MSGPACK], ids=["json", "msgpack"])
def codec(request: pytest.FixtureRequest) -> Codec:
    return request.param  # type: ignore[no-any-return]


def client_codec(codec: Codec) -> str:
    return "json" if codec is Codec.JSON else "msgpack"


def make_token(user: str, *, ttl: float = 3600.0, secret: str = SECRET) -> str:
    return jwt.encode({"sub": user, "exp": time.time() + ttl}, secret, algorithm="HS256")


def node_state(node: RunningNode) -> NodeState:
    """The node's lifespan state (hub, backplane, ...), to look at the server side of a connection."""
    return node.server.lifespan.state  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def raw_client(
    node: RunningNode, codec: Codec = Codec.JSON, *, sock: socket.socket | None = None
) -> AsyncIterator[ProtocolClient]:
    async with ProtocolClient.connecting(node.ws_url, codec, timeout=5 * UNIT, sock=sock) as client:
        yield client


@contextlib.asynccontextmanager
async def connected(
    node: RunningNode, user: str, codec: Codec = Codec.JSON, **kwargs: Any
) -> AsyncIterator[ProtocolClient]:
    async with raw_client(node, codec) as client:
        await client.connect(make_token(user), **kwargs)
        yield client


# --- connect ----------------------------------------------------------------------------------------


async def test_connect_with_a_valid_token(node: RunningNode, codec: Codec) -> None:
    """The connect reply has client, user, node, ping_interval, the personal channel and unread."""
    async with raw_client(node, codec) as client:
        assert client.ws.subprotocol == codec.value
        result = await client.connect(make_token("alice"), subscribe=[{"channel": "room:lobby"}])
    assert result["user"] == "alice" and result["client"] and result["node"] == node.settings.node_id
    assert result["ping_interval"] == node.settings.ping_interval and result["unread"] == 0
    assert set(result["channels"]) == {"user:alice", "room:lobby"}
    for position in result["channels"].values():
        assert isinstance(position["epoch"], str) and position["offset"] == 0


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="missing"),
        pytest.param(make_token("alice", secret="a-different-secret-of-enough-length!!"), id="bad-signature"),
        pytest.param(make_token("alice", ttl=-10), id="expired"),
        pytest.param("garbage", id="garbage"),
    ],
)
async def test_bad_tokens_are_closed_with_4501(node: RunningNode, codec: Codec, token: str | None) -> None:
    """A missing, badly signed, expired or garbage token: disconnect push then close 4501 (do not reconnect)."""
    async with raw_client(node, codec) as client:
        await client.send({"id": 1, "op": "connect", **({"token": token} if token is not None else {})})
        code, seen = await client.closed()
    assert code == 4501
    assert seen[-1]["push"] == "disconnect" and seen[-1]["code"] == 4501 and seen[-1]["reconnect"] is False
    assert not any("id" in message for message in seen)  # no reply: the close is the answer


async def test_client_library_stops_on_a_rejected_token(node: RunningNode, codec: Codec) -> None:
    """tidings.client.Connection raises ConnectionClosed(4501) instead of reconnecting forever."""
    connection = Connection(node.ws_url, make_token("alice", ttl=-10), codec=client_codec(codec))
    with pytest.raises(ConnectionClosed) as caught:
        async with asyncio.timeout(5 * UNIT):
            await connection.connect()
    assert caught.value.code == 4501


async def test_token_expiring_during_the_connection_closes_it_with_4501(node: RunningNode) -> None:
    """The session ends when its token does."""
    async with raw_client(node) as client:
        await client.connect(make_token("alice", ttl=0.5 * UNIT))
        code, seen = await client.closed()
    assert code == 4501 and seen[-1]["reason"] == "token expired"


async def test_command_before_connect_closes_with_4500(node: RunningNode, codec: Codec) -> None:
    """connect must come first."""
    async with raw_client(node, codec) as client:
        await client.send({"id": 1, "op": "subscribe", "channel": "room:a"})
        code, seen = await client.closed()
    assert code == 4500 and seen[-1]["push"] == "disconnect"


async def test_no_connect_within_connect_timeout_closes() -> None:
    """A socket that never sends connect is closed after connect_timeout."""
    async with run_node(node_settings(connect_timeout=0.3 * UNIT)) as node, raw_client(node) as client:
        started = time.monotonic()
        code, seen = await client.closed()
    assert code == 4500 and "no connect" in seen[-1]["reason"]
    assert time.monotonic() - started < 3 * UNIT


async def test_unknown_subprotocol_falls_back_to_json(node: RunningNode) -> None:
    """A client offering only unknown subprotocols gets JSON and no Sec-WebSocket-Protocol it did not offer."""
    async with connect(node.ws_url, subprotocols=[Subprotocol("chat.v9")], open_timeout=5 * UNIT) as ws:
        assert ws.subprotocol is None
        client = ProtocolClient(ws, Codec.JSON, timeout=5 * UNIT)
        assert (await client.connect(make_token("alice")))["user"] == "alice"


# --- subscribe, publish, receive ---------------------------------------------------------------------


async def test_subscribe_publish_receive(node: RunningNode, codec: Codec) -> None:
    """A publication reaches every subscriber with channel, epoch, offset, data, from and ts."""
    async with (
        connected(node, "alice", codec) as alice,
        connected(node, "bob", Codec.JSON) as bob,
        connected(node, "carol", Codec.MSGPACK) as carol,
    ):
        for client in (bob, carol):
            reply = await client.call("subscribe", channel="room:lobby")
            assert reply["result"]["offset"] == 0
        before = int(time.time() * 1000)
        reply = await alice.call("publish", channel="room:lobby", data={"text": "hi", "n": [1, 2.5, None]})
        assert reply["result"]["offset"] == 1
        for client in (bob, carol):
            [push] = await client.publications(1)
            assert push["channel"] == "room:lobby" and push["offset"] == 1
            assert push["epoch"] == reply["result"]["epoch"]
            assert push["data"] == {"text": "hi", "n": [1, 2.5, None]}
            assert push["from"]["user"] == "alice" and push["from"]["client"]
            assert before <= push["ts"] <= int(time.time() * 1000)


async def test_publisher_subscribed_gets_its_own_publication(node: RunningNode, codec: Codec) -> None:
    """Every client sees the same ordered stream, its own publications included."""
    async with connected(node, "alice", codec) as alice:
        await alice.call("subscribe", channel="room:echo")
        for i in range(3):
            await alice.call("publish", channel="room:echo", data=i)
        pushes = await alice.publications(3)
    assert [(p["offset"], p["data"]) for p in pushes] == [(1, 0), (2, 1), (3, 2)]


async def test_unsubscribe_stops_delivery_and_ephemeral_skips_history(
    node: RunningNode, codec: Codec
) -> None:
    """After unsubscribe nothing arrives; an ephemeral publication is pushed without offset and not kept."""
    async with connected(node, "alice", codec) as alice, connected(node, "bob", codec) as bob:
        await bob.call("subscribe", channel="room:a")
        await bob.call("subscribe", channel="room:b")
        assert (await alice.call("publish", channel="room:a", data="typing", ephemeral=True))["result"] == {}
        [typing] = await bob.publications(1)
        assert "offset" not in typing and typing["data"] == "typing"
        assert (await bob.call("unsubscribe", channel="room:a"))["result"] == {}
        await alice.call("publish", channel="room:a", data="missed")
        await alice.call("publish", channel="room:b", data="seen")
        [seen] = await bob.publications(1)
        assert seen["channel"] == "room:b"
        history = (await bob.call("history", channel="room:a"))["result"]
        assert [p["data"] for p in history["publications"]] == ["missed"]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def any_node(request: pytest.FixtureRequest) -> AsyncIterator[RunningNode]:
    """One node on the in-memory backplane, or on a real Redis."""
    limits = {"command_rate": 1000.0, "command_burst": 1000}
    if request.param == "memory":
        settings = node_settings(**limits)
    else:
        settings = node_settings(
            redis_url=request.getfixturevalue("redis_url"),
            key_prefix=request.getfixturevalue("key_prefix"),
            **limits,
        )
    async with run_node(settings) as running:
        yield running


async def test_publishes_sent_without_waiting_are_pipelined_in_order(any_node: RunningNode) -> None:
    """Publishes in flight keep their order (offsets, replies, pushes); a following command sees them all.

    Replies follow command order, an error reply to a bad command included.
    """
    async with connected(any_node, "alice") as alice, connected(any_node, "bob") as bob:
        await bob.call("subscribe", channel="room:pipe")
        count = 100  # more than a connection may have in flight: the reader waits for the oldest
        for n in range(count):
            await alice.send({"id": 1000 + n, "op": "publish", "channel": "room:pipe", "data": n})
        await alice.send({"id": 4000, "op": "no-such-op"})
        await alice.send({"id": 5000, "op": "history", "channel": "room:pipe", "limit": count})
        replies = [await alice.recv() for _ in range(count + 2)]
        assert [r["id"] for r in replies] == [*range(1000, 1000 + count), 4000, 5000]
        assert [r["result"]["offset"] for r in replies[:count]] == list(range(1, count + 1))
        assert "error" in replies[count]
        assert [p["data"] for p in replies[-1]["result"]["publications"]] == list(range(count))
        pushes = await bob.publications(count)
        assert [(p["offset"], p["data"]) for p in pushes] == [(n + 1, n) for n in range(count)]


# --- recovery ---------------------------------------------------------------------------------------


async def test_recovery_after_reconnect_returns_exactly_the_missed_publications(
    node: RunningNode, codec: Codec
) -> None:
    """Reconnect with since (in connect or in subscribe): the missed ones, then live ones, no gap, no duplicate."""
    async with connected(node, "bob", codec) as bob:
        async with connected(node, "alice", codec) as alice:
            await alice.call("subscribe", channel="room:r")
            for i in (1, 2):
                await bob.call("publish", channel="room:r", data=i)
            seen = await alice.publications(2)
        last = {"epoch": seen[-1]["epoch"], "offset": seen[-1]["offset"]}
        for i in (3, 4, 5):
            await bob.call("publish", channel="room:r", data=i)

        async with raw_client(node, codec) as alice:
            result = await alice.connect(
                make_token("alice"), subscribe=[{"channel": "room:r", "since": last}]
            )
            channel = result["channels"]["room:r"]
            assert channel["recovered"] is True and channel["offset"] == 5
            assert [(p["offset"], p["data"]) for p in channel["publications"]] == [(3, 3), (4, 4), (5, 5)]
            await bob.call("publish", channel="room:r", data=6)
            [live] = await alice.publications(1)
            assert live["offset"] == 6  # the next publication is the next offset: no gap, no duplicate

        async with connected(node, "alice", codec) as alice:
            reply = (await alice.call("subscribe", channel="room:r", since={**last, "offset": 4}))["result"]
            assert reply["recovered"] is True and reply["offset"] == 6
            assert [p["offset"] for p in reply["publications"]] == [5, 6]
            await bob.call("publish", channel="room:r", data=7)
            [live] = await alice.publications(1)
            assert live["offset"] == 7


async def test_recovery_of_the_personal_channel(node: RunningNode, codec: Codec) -> None:
    """Notifications sent to user:<id> while the user was away are recovered with since on reconnect."""
    async with connected(node, "alice", codec) as alice:
        await node_state(node)["backplane"].publish("user:alice", {"n": 1})
        [seen] = await alice.publications(1)
    backplane = node_state(node)["backplane"]
    await backplane.publish("user:alice", {"n": 2})
    await backplane.publish("user:alice", {"n": 3})
    since = {"epoch": seen["epoch"], "offset": seen["offset"]}
    async with raw_client(node, codec) as alice:
        result = await alice.connect(
            make_token("alice"), subscribe=[{"channel": "user:alice", "since": since}]
        )
    personal = result["channels"]["user:alice"]
    assert personal["recovered"] is True and [p["data"] for p in personal["publications"]] == [
        {"n": 2},
        {"n": 3},
    ]


async def test_recovery_impossible_says_recovered_false(codec: Codec) -> None:
    """A wrong epoch, a position beyond the top, or a gap beyond the history window: recovered false."""
    async with run_node(node_settings(history_size=3)) as node, connected(node, "alice", codec) as alice:
        for i in range(1, 7):
            await alice.call("publish", channel="room:w", data=i)
        top = (await alice.call("history", channel="room:w", limit=1))["result"]
        epoch = top["epoch"]
        cases = [
            ({"epoch": "not-" + epoch, "offset": 5}, "room:w"),
            ({"epoch": epoch, "offset": 7}, "room:w"),
            ({"epoch": epoch, "offset": 1}, "room:w"),  # 2 and 3 have left the 3-publication window
        ]
        for since, channel in cases:
            reply = (await alice.call("subscribe", channel=channel, since=since))["result"]
            assert reply["recovered"] is False, since
            assert (reply["epoch"], reply["offset"]) == (epoch, 6)
            await alice.call("unsubscribe", channel=channel)
        reply = (await alice.call("subscribe", channel="room:w", since={"epoch": epoch, "offset": 3}))[
            "result"
        ]
        assert reply["recovered"] is True and [p["offset"] for p in reply["publications"]] == [4, 5, 6]


async def test_client_library_recovers_across_a_server_initiated_reconnect(
    node: RunningNode, codec: Codec
) -> None:
    """tidings.client.Connection reconnects after 4001 and its user sees every publication once, in order."""
    connection = Connection(node.ws_url, make_token("alice"), codec=client_codec(codec), min_backoff=0.01)
    await connection.connect(["room:c"])
    try:
        async with connected(node, "bob", codec) as bob:
            await bob.call("publish", channel="room:c", data=1)
            assert (await connection.publications("room:c", timeout=5 * UNIT))["data"] == 1
            server_side = node_state(node)["hub"].connections[connection.info["client"]]
            assert isinstance(server_side, ServerConnection)
            server_side.close(4001, "node shutting down")
            for i in range(2, 6):
                await bob.call("publish", channel="room:c", data=i)
            got = [(await connection.publications("room:c", timeout=5 * UNIT))["data"] for _ in range(4)]
        assert got == [2, 3, 4, 5]
        assert connection.reconnects == 1
    finally:
        await connection.close()


# --- history ----------------------------------------------------------------------------------------


async def test_history_limit_reverse_since(node: RunningNode, codec: Codec) -> None:
    """history returns the top and publications: oldest first, newest first with reverse, after since."""
    async with connected(node, "alice", codec) as alice:
        for i in range(1, 11):
            await alice.call("publish", channel="room:h", data=i)

        async def offsets(**fields: Any) -> list[int]:
            result = (await alice.call("history", channel="room:h", **fields))["result"]
            assert result["offset"] == 10
            return [p["offset"] for p in result["publications"]]

        epoch = (await alice.call("history", channel="room:h", limit=1))["result"]["epoch"]
        assert await offsets() == list(range(1, 11))
        assert await offsets(limit=3) == [1, 2, 3]
        assert await offsets(limit=3, reverse=True) == [10, 9, 8]
        assert await offsets(since={"epoch": epoch, "offset": 7}) == [8, 9, 10]
        assert await offsets(since={"epoch": epoch, "offset": 4}, limit=2) == [5, 6]
        assert await offsets(since={"epoch": epoch, "offset": 10}) == []
        publication = (await alice.call("history", channel="room:h", limit=1))["result"]["publications"][0]
        assert (
            publication["data"] == 1
            and publication["from"]["user"] == "alice"
            and publication["epoch"] == epoch
        )
        empty = (await alice.call("history", channel="room:never"))["result"]
        assert empty["offset"] == 0 and empty["publications"] == []


# --- refusals that keep the connection -------------------------------------------------------------


async def test_forbidden_channels_get_403_and_the_connection_goes_on(node: RunningNode, codec: Codec) -> None:
    """Other users' channels, others' conversations and publishing to broadcast are 403 replies, nothing more."""
    async with connected(node, "alice", codec) as alice:
        refused = [
            ("subscribe", {"channel": "user:bob"}),
            ("subscribe", {"channel": "dm:bob:carol"}),
            ("publish", {"channel": "broadcast", "data": 1}),
            ("publish", {"channel": "user:bob", "data": 1}),
            ("history", {"channel": "dm:bob:carol"}),
        ]
        for op, fields in refused:
            reply = await alice.call(op, **fields)
            assert reply["error"]["code"] == 403 and reply["error"]["temporary"] is False, (op, fields)
        assert (await alice.call("subscribe", channel="dm:alice:bob"))["result"]["offset"] == 0
        assert (await alice.call("ping"))["result"] == {}


async def test_forbidden_channels_in_connect_are_refused_one_by_one(node: RunningNode, codec: Codec) -> None:
    """connect succeeds; each channel it may not have carries its own error."""
    async with httpx.AsyncClient(
        base_url=node.http_url, headers={"authorization": f"Bearer {API_KEY}"}
    ) as http:
        assert (await http.post("/api/rooms/secret", json={"private": True})).status_code == 200
    async with raw_client(node, codec) as alice:
        channels = ["user:bob", "room:secret", "room:open"]
        result = await alice.connect(make_token("alice"), subscribe=[{"channel": c} for c in channels])
        assert result["channels"]["user:bob"]["error"]["code"] == 403
        assert result["channels"]["room:secret"]["error"]["code"] == 403
        assert (
            result["channels"]["room:open"]["offset"] == 0 and result["channels"]["user:alice"]["offset"] == 0
        )
        assert (await alice.call("ping"))["result"] == {}


async def test_oversized_frame_gets_413_and_the_node_keeps_serving(codec: Codec) -> None:
    """A frame over max_message_size is refused with 413 (id 0); that client and the others carry on."""
    async with (
        run_node(node_settings(max_message_size=1024)) as node,
        connected(node, "alice", codec) as alice,
        connected(node, "bob", codec) as bob,
    ):
        await bob.call("subscribe", channel="room:big")
        await alice.send({"id": 5, "op": "publish", "channel": "room:big", "data": "x" * 2000})
        reply = await alice.recv()
        assert reply["id"] == 0 and reply["error"]["code"] == 413
        assert (await alice.call("ping"))["result"] == {}
        await alice.call("publish", channel="room:big", data="small")
        [push] = await bob.publications(1)
        assert push["data"] == "small" and push["offset"] == 1  # the oversized one was never published


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param("json", id="garbage"),
        pytest.param("wrong-type", id="wrong-frame-type"),
        pytest.param("no-id", id="no-id"),
    ],
)
async def test_garbage_frame_closes_with_4500_and_others_carry_on(
    node: RunningNode, codec: Codec, frame: str
) -> None:
    """A frame that is not a command closes that connection only (4500, do not reconnect)."""
    garbage: str | bytes
    if frame == "json":
        garbage = "{not json" if codec is Codec.JSON else b"\xc1\xc1"
    elif frame == "wrong-type":
        garbage = b'{"id": 2, "op": "ping"}' if codec is Codec.JSON else '{"id": 2, "op": "ping"}'
    else:
        garbage = codec.encode({"op": "ping"})
    async with connected(node, "alice", codec) as alice, connected(node, "bob", codec) as bob:
        await alice.ws.send(garbage)
        code, seen = await alice.closed()
        assert code == 4500
        assert seen[-1] == {
            "push": "disconnect",
            "code": 4500,
            "reason": seen[-1]["reason"],
            "reconnect": False,
        }
        assert (await bob.call("ping"))["result"] == {}


# --- frames with several messages -------------------------------------------------------------------


async def test_a_burst_arrives_as_one_frame_and_clients_read_every_message(
    node: RunningNode, codec: Codec
) -> None:
    """Queued messages go out as ONE frame; both the raw codec and tidings.client read them all, in order."""
    connection = Connection(node.ws_url, make_token("carol"), codec=client_codec(codec))
    await connection.connect(["room:burst"])
    try:
        async with connected(node, "bob", codec) as bob:
            await bob.call("subscribe", channel="room:burst")
            frames_before = bob.frames
            backplane = node_state(node)["backplane"]
            for i in range(20):  # no await yields to the writers in between: they find 20 queued
                await backplane.publish("room:burst", i)
            pushes = await bob.publications(20)
            assert [p["data"] for p in pushes] == list(range(20))
            assert bob.frames - frames_before < 20  # coalesced
            got = [(await connection.publications("room:burst", timeout=5 * UNIT))["data"] for _ in range(20)]
            assert got == list(range(20))
    finally:
        await connection.close()


# --- slow consumers ---------------------------------------------------------------------------------

OUTBOX = 256 * 1024


def payload() -> str:
    """60 KB that permessage-deflate cannot shrink, so the bytes really back up."""
    return secrets.token_urlsafe(45_000)


def small_receive_buffer_socket(port: int) -> socket.socket:
    """A connected socket with a tiny receive buffer, so an unread stream backs up into the server fast."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def flood_until_cut(node: RunningNode, channel: str, client_id: str, *, limit: int = 400) -> int:
    """Publish large payloads until the server closes ``client_id``; return how many were published."""
    backplane = node_state(node)["backplane"]
    server_side = node_state(node)["hub"].connections[client_id]
    assert isinstance(server_side, ServerConnection)
    async with asyncio.timeout(20 * UNIT):
        for count in range(1, limit + 1):
            await backplane.publish(channel, {"n": count, "pad": payload()})
            await asyncio.sleep(0)  # let writers and readers run, as a live node would
            if server_side.closed:
                return count
    raise AssertionError(f"the slow client was not cut off after {limit} publications")


async def test_client_that_never_reads_is_cut_off_while_others_receive_everything(codec: Codec) -> None:
    """A client that stops reading is closed (4008) once its outbox is full; a reader on the same channel misses nothing."""
    async with run_node(node_settings(outbox_size=OUTBOX)) as node:
        fast = Connection(node.ws_url, make_token("fast"), codec=client_codec(codec))
        await fast.connect(["room:flood"])
        try:
            sock = small_receive_buffer_socket(node.port)
            async with raw_client(node, codec, sock=sock) as slow:
                result = await slow.connect(make_token("slow"), subscribe=[{"channel": "room:flood"}])
                slow.ws.transport.pause_reading()  # never read again
                published = await flood_until_cut(node, "room:flood", result["client"])
                hub = node_state(node)["hub"]
                # A reader that never reads cannot take a close frame either: the transport is dropped.
                await wait_until(lambda: result["client"] not in hub.connections, what="slow client dropped")
                for n in range(published + 1, published + 4):
                    await node_state(node)["backplane"].publish("room:flood", {"n": n, "pad": "after"})
                total = published + 3
                got = [
                    (await fast.publications("room:flood", timeout=10 * UNIT))["data"]["n"]
                    for _ in range(total)
                ]
                assert got == list(range(1, total + 1))
                assert list(hub.subscribers("room:flood")) == [hub.connections[fast.info["client"]]]
        finally:
            await fast.close()


async def test_slow_reader_learns_it_was_cut_off_with_4008(codec: Codec) -> None:
    """A reader that resumes after being cut finds the disconnect push (4008, reconnect) and a 4008 close."""
    async with run_node(node_settings(outbox_size=OUTBOX)) as node:
        sock = small_receive_buffer_socket(node.port)
        async with raw_client(node, codec, sock=sock) as slow:
            result = await slow.connect(make_token("slow"), subscribe=[{"channel": "room:flood"}])
            slow.ws.transport.pause_reading()
            await flood_until_cut(node, "room:flood", result["client"])
            slow.ws.transport.resume_reading()
            code, seen = await slow.closed(within=10 * UNIT)
    assert code == 4008
    assert seen[-1] == {"push": "disconnect", "code": 4008, "reason": seen[-1]["reason"], "reconnect": True}
    offsets = [m["offset"] for m in seen if m.get("push") == "publication"]
    assert offsets == list(
        range(1, len(offsets) + 1)
    )  # what it got is a gap-free prefix: recovery can resume
