"""Hostile frames over a live socket: the node never crashes, never leaks exception text, others carry on.

Each hypothesis example opens a real WebSocket to one real node (JSON or MessagePack),
optionally connects, sends a few generated frames -- arbitrary JSON, command-shaped
objects with wrong types, unknown ops, truncated frames, deep nesting, huge numbers,
NaN, invalid UTF-8 in text frames, binary frames on JSON connections and text frames
on MessagePack ones, oversized frames -- then a probe ``ping``. It reads everything the
node answers until the probe's reply or the close, and checks:

  * every reply error is a protocol code (never 500) and no message or close reason
    carries exception text;
  * a close, if any, has a code the protocol (or RFC 6455) defines for bad input;
  * nothing was logged at ERROR (no "Exception in ASGI application");
  * a bystander connection on the same node still receives a publication made after it.

CI runs a fixed number of examples with a fixed seed (``derandomize``). A longer, random
run: ``TIDINGS_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/test_fuzz.py -p no:cacheprovider``
(a failure prints the seed; replay it with ``--hypothesis-seed=<seed>``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed as WebSocketClosed
from websockets.typing import Subprotocol

from loadtest.protocol_client import ProtocolClient
from tidings.client import Connection
from tidings.server.gateway.protocol import MAX_ID, Codec

from .support.logs import ErrorLog, error_log
from .support.node import RunningNode, run_node
from .support.node import test_settings as node_settings
from .support.timing import UNIT

EXAMPLES = int(os.environ.get("TIDINGS_FUZZ_EXAMPLES", "0"))
MAX_MESSAGE_SIZE = 16 * 1024  # small, so oversized frames stay cheap to make
PROBE_ID = 987_654_321

# A reply error may only carry these codes; 500 would mean an exception reached the command runner.
ERROR_CODES = {400, 401, 403, 404, 413, 429, 503}
# Close codes for bad input: ours (4500 protocol, 4501 auth, 4029 rate), and RFC 6455's 1002
# (protocol error), 1007 (invalid UTF-8 in a text frame) and 1009 (message too big) from the WebSocket layer.
CLOSE_CODES = {4500, 4501, 4029, 1002, 1007, 1009}
LEAK = re.compile(
    r"Traceback|Exception|[A-Z][a-z]+Error\b|File \"|line \d+|has no attribute|not subscriptable|"
    r"unhashable|NoneType|<class|object at 0x|codec can't"
)
OPS = [
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "history",
    "presence",
    "notifications",
    "read",
    "ping",
]
FIELDS = ["id", "op", "token", "channel", "data", "since", "subscribe", "limit", "reverse", "ephemeral",
          "ids", "all", "before", "unread_only", "epoch", "offset"]  # fmt: skip

# --- strategies --------------------------------------------------------------------------------------

channels = st.one_of(
    st.sampled_from(
        ["room:lobby", "room:watch", "user:fuzzer", "user:someone", "dm:a:b", "dm:fuzzer:zed", "broadcast"]
    ),
    st.text(alphabet="abcxyz:_-.@", max_size=12),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    channels,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(
    json_values,
    st.integers(min_value=-(2**70), max_value=2**70),  # beyond 64 bits
    st.just({"epoch": "e", "offset": -1}),
    st.lists(st.fixed_dictionaries({"channel": channels}), max_size=3),
)
# Mostly valid ids, so that most frames get past the envelope check and reach the command's own rules.
ids = st.one_of(st.integers(1, 10_000), st.integers(1, 10_000), st.integers(-5, MAX_ID + 5), json_values)
ops = st.one_of(*[st.sampled_from(OPS)] * 4, st.text(max_size=10), json_values)


def field_strategies(garbage: st.SearchStrategy[Any]) -> dict[str, st.SearchStrategy[Any]]:
    """Per field: plausible values (so commands get deep into their rules) or anything at all."""
    since = st.fixed_dictionaries({"epoch": st.text(max_size=10), "offset": st.integers(-3, 2**64 - 1)})
    plausible: dict[str, st.SearchStrategy[Any]] = {
        "token": st.text(max_size=40),
        "channel": channels,
        "data": garbage,
        "since": since,
        "subscribe": st.lists(
            st.fixed_dictionaries({"channel": channels}, optional={"since": since}), max_size=3
        ),
        "limit": st.integers(-3, 1100),
        "ids": st.lists(st.text(max_size=70), max_size=3),
        "before": st.text(max_size=70),
        "epoch": st.text(max_size=10),
        "offset": st.integers(-3, 2**64 - 1),
    }
    for flag in ("reverse", "ephemeral", "all", "unread_only"):
        plausible[flag] = st.booleans()
    return {name: st.one_of(plausible[name], plausible[name], garbage) for name in FIELDS[2:]}


def command_dicts(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"id": ids, "op": ops}, optional=field_strategies(values))


commands = command_dicts(field_values)


@dataclass(frozen=True)
class Frame:
    """One WebSocket message to send: ``text`` True for a text frame (``payload`` may be invalid UTF-8)."""

    payload: bytes
    text: bool


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity come out as bare words: invalid JSON


def _msgpack(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (OverflowError, TypeError, ValueError):  # an integer beyond 64 bits: send garbage instead
        return b"\xc1"


@st.composite
def json_frames(draw: st.DrawFn) -> Frame:
    kind = draw(
        st.sampled_from(["command", "value", "truncated", "nested", "number", "utf8", "binary", "big"])
    )
    if kind == "command":
        return Frame(_json(draw(commands)), True)
    if kind == "value":
        return Frame(_json(draw(st.one_of(json_values, st.floats()))), True)
    if kind == "truncated":
        whole = _json(draw(commands))
        return Frame(whole[: draw(st.integers(0, max(0, len(whole) - 1)))], True)
    if kind == "nested":
        depth = draw(st.integers(100, 6000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return Frame((opener * depth + "1" + closer * depth).encode(), True)
    if kind == "number":
        number = draw(st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "1" * 5000, "0.1e-99999", "-0"]))
        return Frame(f'{{"id": {number}, "op": "ping"}}'.encode(), True)
    if kind == "utf8":
        return Frame(
            b'{"id": 1, "op": "ping", "x": "' + draw(st.binary(min_size=1, max_size=8)) + b'\xff"}', True
        )
    if kind == "binary":
        return Frame(draw(st.one_of(st.binary(max_size=64), st.builds(_msgpack, commands))), False)
    size = draw(st.integers(MAX_MESSAGE_SIZE + 1, 4 * MAX_MESSAGE_SIZE))
    return Frame(b'{"id": 7, "op": "publish", "channel": "room:a", "data": "' + b"x" * size + b'"}', True)


msgpack_values = st.recursive(
    st.one_of(scalars, st.binary(max_size=16), st.floats(), st.builds(msgpack.ExtType, st.integers(0, 127),
                                                                       st.binary(max_size=8))),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()),
                                                                         inner, max_size=4)),
    max_leaves=12,
)  # fmt: skip


@st.composite
def msgpack_frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.sampled_from(["command"] * 5 + ["value", "truncated", "garbage", "text"]))
    if kind == "command":
        return Frame(_msgpack(draw(command_dicts(msgpack_values))), False)
    if kind == "value":
        return Frame(_msgpack(draw(msgpack_values)), False)
    if kind == "truncated":
        whole = _msgpack(draw(commands))
        return Frame(whole[: draw(st.integers(0, max(0, len(whole) - 1)))], False)
    if kind == "garbage":
        return Frame(draw(st.binary(max_size=64)), False)
    return Frame(_json(draw(commands)), True)  # a text frame on a MessagePack connection


# In an open session: every command has a fresh valid id, so each one must get exactly one reply.
command_bodies = st.fixed_dictionaries({"op": ops}, optional=field_strategies(field_values))
msgpack_session_values = st.recursive(
    st.one_of(scalars, st.binary(max_size=16), st.floats(), st.builds(msgpack.ExtType, st.integers(0, 127),
                                                                       st.binary(max_size=8))),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)  # fmt: skip
msgpack_command_bodies = st.fixed_dictionaries({"op": ops}, optional=field_strategies(msgpack_session_values))


# --- the harness -------------------------------------------------------------------------------------


@dataclass
class Target:
    node: RunningNode
    bystander: Connection
    token: str
    errors: ErrorLog
    probes: Iterator[int]


@pytest.fixture
async def target(token: Any) -> AsyncIterator[Target]:
    with error_log() as errors:
        async with run_node(node_settings(max_message_size=MAX_MESSAGE_SIZE, command_rate=1000.0)) as node:
            bystander = Connection(node.ws_url, token("bystander"), reconnect=False)
            await bystander.connect(["room:watch"])
            try:
                yield Target(node, bystander, token("fuzzer"), errors, itertools.count(1))
            finally:
                await bystander.close()


def check_message(message: Any) -> None:
    assert isinstance(message, dict), message
    if "error" in message:
        error = message["error"]
        assert error["code"] in ERROR_CODES, message
        assert not LEAK.search(error["message"]), message
    if message.get("push") == "disconnect":
        assert not LEAK.search(message["reason"]), message


async def exchange(client: ProtocolClient, frames: list[Frame]) -> int | None:
    """Send ``frames`` and the probe; check all that comes back. Returns the close code, if closed."""
    try:
        for frame in frames:
            await client.ws.send(frame.payload, text=frame.text)
        await client.send({"id": PROBE_ID, "op": "ping"})
        while True:
            message = await client.recv()
            check_message(message)
            if message.get("id") == PROBE_ID and "result" in message:
                return None
    except WebSocketClosed:
        close = client.close_frame
        code = close.code if close else None
        assert code in CLOSE_CODES, f"closed with {code}: {close}"
        assert close is None or not LEAK.search(close.reason), close
        return code


async def still_serving(target: Target) -> None:
    """The bystander gets a publication made after the hostile frames."""
    probe = next(target.probes)
    state = target.node.server.lifespan.state
    await state["backplane"].publish("room:watch", {"probe": probe})
    async with asyncio.timeout(5 * UNIT):
        while (await target.bystander.publications("room:watch"))["data"] != {"probe": probe}:
            pass  # a fuzzed client may publish to room:watch too


async def run_example(target: Target, codec: Codec, connect_first: bool, frames: list[Frame]) -> None:
    async with ProtocolClient.connecting(target.node.ws_url, codec, timeout=5 * UNIT) as client:
        if connect_first:
            await client.call("connect", token=target.token)
        await exchange(client, frames)
    await still_serving(target)
    assert not target.errors.records, target.errors.messages()


def fuzz_settings() -> settings:
    if EXAMPLES:
        return settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    return settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@fuzz_settings()
@given(connect_first=st.booleans(), frames=st.lists(json_frames(), min_size=1, max_size=6))
async def test_hostile_json_frames(target: Target, connect_first: bool, frames: list[Frame]) -> None:
    await run_example(target, Codec.JSON, connect_first, frames)


@fuzz_settings()
@given(connect_first=st.booleans(), frames=st.lists(msgpack_frames(), min_size=1, max_size=6))
async def test_hostile_msgpack_frames(target: Target, connect_first: bool, frames: list[Frame]) -> None:
    await run_example(target, Codec.MSGPACK, connect_first, frames)


@fuzz_settings()
@given(data=st.data(), codec=st.sampled_from([Codec.JSON, Codec.MSGPACK]))
async def test_hostile_commands_in_an_open_session(target: Target, data: st.DataObject, codec: Codec) -> None:
    """Well-framed commands with wrong types, unknown ops and odd values: one reply each, never a close."""
    bodies = command_bodies if codec is Codec.JSON else msgpack_command_bodies
    commands = [
        {**body, "id": i} for i, body in enumerate(data.draw(st.lists(bodies, min_size=1, max_size=10)), 2)
    ]
    payloads = [_json(c) if codec is Codec.JSON else _msgpack(c) for c in commands]
    frames = [Frame(payload, codec is Codec.JSON) for payload in payloads]
    async with connect(
        target.node.ws_url, subprotocols=[Subprotocol(codec.value)], max_size=None, open_timeout=5 * UNIT
    ) as ws:
        await ws.send(codec.encode({"id": 1, "op": "connect", "token": target.token}))
        replies: dict[int, int] = {}
        for frame in frames:
            await ws.send(frame.payload, text=frame.text)
        await ws.send(codec.encode({"id": PROBE_ID, "op": "ping"}))
        async with asyncio.timeout(5 * UNIT):
            while PROBE_ID not in replies:
                for message in codec.split(await ws.recv()):  # a close here fails the test
                    check_message(message)
                    if "id" in message:
                        replies[message["id"]] = replies.get(message["id"], 0) + 1
    assert replies == {command_id: 1 for command_id in [1, *range(2, len(commands) + 2), PROBE_ID]}
    await still_serving(target)
    assert not target.errors.records, [r.getMessage() for r in target.errors.records]
