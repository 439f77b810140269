"""Wire protocol v1 (pure): round-trips in both encodings and every malformed input we could think of."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.server.channels import Channel
from tidings.server.gateway.client_commands import (
    Command,
    Connect,
    History,
    Notifications,
    Ping,
    Presence,
    Publish,
    Read,
    Subscribe,
    SubscribeRequest,
    Unsubscribe,
    decode_command,
)
from tidings.server.gateway.protocol import (
    CLOSE_FORBIDDEN,
    CLOSE_NODE_SHUTDOWN,
    CLOSE_PROTOCOL_VIOLATION,
    CLOSE_RATE_LIMITED,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHENTICATED,
    MAX_ID,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    Codec,
    Disconnect,
    ProtocolError,
    StreamPosition,
    check_data,
    close_reconnects,
    error_reply,
    ok_reply,
    publication_push,
)

MAX_SIZE = 64 * 1024
CODECS = [Codec.JSON, Codec.MSGPACK]


def wire(command: Command) -> dict[str, Any]:
    """A command as a client puts it on the wire (DESIGN.md "Wire protocol v1"), optional fields included."""
    message: dict[str, Any] = {"id": command.id, "op": command.op}
    if isinstance(command, Connect):
        message["token"] = command.token
        message["subscribe"] = [
            {"channel": r.channel.text, **({"since": r.since.encode()} if r.since else {})}
            for r in command.subscribe
        ]
    elif isinstance(command, Subscribe):
        message["channel"] = command.channel.text
        if command.since is not None:
            message["since"] = command.since.encode()
    elif isinstance(command, (Unsubscribe, Presence)):
        message["channel"] = command.channel.text
    elif isinstance(command, Publish):
        message.update(channel=command.channel.text, data=command.data, ephemeral=command.ephemeral)
    elif isinstance(command, History):
        message.update(channel=command.channel.text, limit=command.limit, reverse=command.reverse)
        if command.since is not None:
            message["since"] = command.since.encode()
    elif isinstance(command, Notifications):
        message.update(unread_only=command.unread_only, limit=command.limit)
        if command.before is not None:
            message["before"] = command.before
    elif isinstance(command, Read):
        message.update(ids=list(command.ids), all=command.all)
    return message


def decode(message: Any, codec: Codec = Codec.JSON, *, max_size: int = MAX_SIZE) -> Command:
    return decode_command(codec.encode(message), codec, max_size=max_size)


# --- strategies -------------------------------------------------------------------------------------

name_chars = st.sampled_from("abcxyzABZ0189_.@-")
names = st.text(name_chars, min_size=1, max_size=20)
users = names
channel_texts = st.one_of(
    st.builds(lambda n: f"room:{n}", names),
    st.builds(lambda n: f"user:{n}", names),
    st.builds(lambda a, b: f"dm:{min(a, b)}:{max(a, b)}", names, names),
    st.just("broadcast"),
)
channels = channel_texts.map(Channel.parse)
ids = st.integers(1, MAX_ID)
positions = st.builds(StreamPosition, st.text(max_size=64), st.integers(0, MAX_ID))
maybe_positions = st.none() | positions
json_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
notification_ids = st.text(st.characters(codec="ascii"), min_size=1, max_size=64)
commands = st.one_of(
    st.builds(
        Connect,
        ids,
        st.text(min_size=1, max_size=200),
        st.lists(st.builds(SubscribeRequest, channels, maybe_positions), max_size=4).map(tuple),
    ),
    st.builds(Subscribe, ids, channels, maybe_positions),
    st.builds(Unsubscribe, ids, channels),
    st.builds(Publish, ids, channels, json_data, st.booleans()),
    st.builds(History, ids, channels, maybe_positions, st.integers(1, 1000), st.booleans()),
    st.builds(Presence, ids, channels),
    st.builds(Notifications, ids, st.booleans(), st.integers(1, 200), st.none() | notification_ids),
    st.builds(Read, ids, st.lists(notification_ids, min_size=1, max_size=5).map(tuple), st.booleans()),
    st.builds(Read, ids, st.just(()), st.just(True)),
    st.builds(Ping, ids),
)
senders = st.none() | st.fixed_dictionaries({"user": users, "client": names})
pushes = st.one_of(
    st.builds(
        publication_push,
        channel_texts,
        st.text(max_size=16),
        st.none() | st.integers(1, MAX_ID),
        json_data,
        senders,
        st.integers(0, 2**53),
    ),
    st.builds(lambda code, reason: Disconnect(code, reason).push(), st.integers(4000, 4999), st.text()),
    st.builds(
        lambda channel, member: {"push": "join", "channel": channel, "member": member}, channel_texts, senders
    ),
)
replies = st.one_of(
    st.builds(ok_reply, ids, st.dictionaries(st.text(max_size=8), json_data, max_size=4)),
    st.builds(
        error_reply,
        ids,
        st.sampled_from([400, 401, 403, 404, 413, 429, 500, 503]),
        st.text(),
        temporary=st.booleans(),
    ),
)
messages = replies | pushes


# --- round-trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@given(command=commands)
@settings(max_examples=200, deadline=None)
def test_every_command_round_trips(codec: Codec, command: Command) -> None:
    """Whatever a client may send decodes to exactly the command it meant, in both encodings."""
    frame = codec.encode(wire(command))
    assert isinstance(frame, str if codec is Codec.JSON else bytes)
    assert decode_command(frame, codec, max_size=1 << 20) == command


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@given(batch=st.lists(messages, min_size=1, max_size=6))
@settings(max_examples=100, deadline=None)
def test_replies_and_pushes_round_trip_one_per_frame_or_joined(
    codec: Codec, batch: list[dict[str, Any]]
) -> None:
    """Replies and pushes survive encode → join → split, alone or several in one frame."""
    encoded = [codec.encode(message) for message in batch]
    for message, frame in zip(batch, encoded, strict=True):
        assert codec.split(frame) == [message]
    assert codec.split(codec.join(encoded)) == batch


@given(data=json_data)
@settings(max_examples=100, deadline=None)
def test_check_data_accepts_what_both_encodings_carry(data: Any) -> None:
    """Every JSON-compatible value passes check_data and reads back equal from both encodings."""
    check_data(data)
    assert json.loads(Codec.JSON.encode({"d": data}))["d"] == data
    assert msgpack.unpackb(Codec.MSGPACK.encode({"d": data}), raw=False)["d"] == data


def test_json_frames_are_compact_text_without_raw_newlines() -> None:
    """A JSON message never holds a raw newline, so newline-joined frames split unambiguously."""
    frame = Codec.JSON.encode({"push": "publication", "data": "line1\nline2\u2028é"})
    assert isinstance(frame, str) and "\n" not in frame and " " not in frame.split('"data"')[0]
    assert Codec.JSON.split(Codec.JSON.join([frame, frame])) == [json.loads(frame)] * 2


def test_join_of_one_message_is_that_message() -> None:
    """A single queued message is sent as is: no copy, no separator."""
    frame = Codec.MSGPACK.encode({"id": 1, "result": {}})
    assert Codec.MSGPACK.join([frame]) is frame


@pytest.mark.parametrize(
    ("offered", "codec"),
    [
        ([], Codec.JSON),
        ([SUBPROTOCOL_JSON], Codec.JSON),
        ([SUBPROTOCOL_MSGPACK], Codec.MSGPACK),
        (["chat", SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON], Codec.MSGPACK),
        ([SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK], Codec.JSON),
        (["tidings.cbor"], Codec.JSON),
    ],
)
def test_codec_is_the_first_known_subprotocol_offered(offered: list[str], codec: Codec) -> None:
    """The first known subprotocol wins; none (or none known) means JSON."""
    assert Codec.negotiate(offered) is codec


def test_optional_fields_take_their_defaults() -> None:
    """Omitted optional fields get the defaults DESIGN.md implies."""
    assert decode({"id": 1, "op": "connect", "token": "t"}) == Connect(1, "t", ())
    assert decode({"id": 2, "op": "publish", "channel": "room:a", "data": None}) == Publish(
        2, Channel.parse("room:a"), None
    )
    assert decode({"id": 3, "op": "history", "channel": "room:a"}) == History(
        3, Channel.parse("room:a"), None, 100, False
    )
    assert decode({"id": 4, "op": "subscribe", "channel": "room:a", "since": None}) == Subscribe(
        4, Channel.parse("room:a")
    )
    assert decode({"id": 5, "op": "notifications"}) == Notifications(5, False, 50, None)
    assert decode({"id": MAX_ID, "op": "ping", "extra": [1]}) == Ping(MAX_ID)


def test_exactly_max_size_is_accepted_and_one_byte_more_is_413() -> None:
    """The size limit counts encoded bytes and is inclusive."""
    base = Codec.JSON.encode({"id": 1, "op": "publish", "channel": "room:a", "data": ""})
    filler = "é" * ((1000 - len(base.encode())) // 2)
    frame = Codec.JSON.encode({"id": 1, "op": "publish", "channel": "room:a", "data": filler})
    size = len(frame.encode())
    assert decode_command(frame, Codec.JSON, max_size=size).data == filler
    with pytest.raises(ProtocolError) as caught:
        decode_command(frame, Codec.JSON, max_size=size - 1)
    assert (caught.value.code, caught.value.close_code, caught.value.id) == (413, None, 0)


# --- malformed input --------------------------------------------------------------------------------

CLOSE = "close"


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def frame_cases() -> list[Any]:
    """(frame, codec, expected): expected is CLOSE (4500) or a reply code with the command's id."""
    packb = msgpack.packb
    return [
        # Not a command at all: close 4500.
        pytest.param("not json", Codec.JSON, CLOSE, id="json-garbage"),
        pytest.param("", Codec.JSON, CLOSE, id="json-empty"),
        pytest.param("{", Codec.JSON, CLOSE, id="json-truncated"),
        pytest.param("[1, 2]", Codec.JSON, CLOSE, id="json-array"),
        pytest.param('"ping"', Codec.JSON, CLOSE, id="json-string"),
        pytest.param("null", Codec.JSON, CLOSE, id="json-null"),
        pytest.param("7", Codec.JSON, CLOSE, id="json-number"),
        pytest.param('{"op": "ping"}', Codec.JSON, CLOSE, id="missing-id"),
        pytest.param('{"id": null, "op": "ping"}', Codec.JSON, CLOSE, id="null-id"),
        pytest.param('{"id": 0, "op": "ping"}', Codec.JSON, CLOSE, id="zero-id"),
        pytest.param('{"id": -1, "op": "ping"}', Codec.JSON, CLOSE, id="negative-id"),
        pytest.param('{"id": 1.5, "op": "ping"}', Codec.JSON, CLOSE, id="float-id"),
        pytest.param('{"id": 1.0, "op": "ping"}', Codec.JSON, CLOSE, id="integral-float-id"),
        pytest.param('{"id": true, "op": "ping"}', Codec.JSON, CLOSE, id="bool-id"),
        pytest.param('{"id": "1", "op": "ping"}', Codec.JSON, CLOSE, id="string-id"),
        pytest.param('{"id": 9007199254740992, "op": "ping"}', Codec.JSON, CLOSE, id="id-above-2**53"),
        pytest.param('{"id": ' + "9" * 5000 + ', "op": "ping"}', Codec.JSON, CLOSE, id="id-5000-digits"),
        pytest.param('{"id": NaN, "op": "ping"}', Codec.JSON, CLOSE, id="nan-id"),
        pytest.param(
            '{"id": 1, "op": "publish", "channel": "room:a", "data": NaN}', Codec.JSON, CLOSE, id="nan"
        ),
        pytest.param(
            '{"id": 1, "op": "publish", "channel": "room:a", "data": Infinity}', Codec.JSON, CLOSE, id="inf"
        ),
        pytest.param(
            '{"id": 1, "op": "publish", "channel": "room:a", "data": -Infinity}', Codec.JSON, CLOSE, id="-inf"
        ),
        pytest.param("[" * 30_000 + "]" * 30_000, Codec.JSON, CLOSE, id="json-nested-30000-deep"),
        pytest.param(
            '{"id": 1, "op": "ping"}\n{"id": 2, "op": "ping"}', Codec.JSON, CLOSE, id="two-commands-one-frame"
        ),
        pytest.param(b'{"id": 1, "op": "ping"}', Codec.JSON, CLOSE, id="binary-frame-on-json"),
        pytest.param('{"id": 1, "op": "ping"}', Codec.MSGPACK, CLOSE, id="text-frame-on-msgpack"),
        pytest.param(b"\xc1", Codec.MSGPACK, CLOSE, id="msgpack-never-used-byte"),
        pytest.param(b"", Codec.MSGPACK, CLOSE, id="msgpack-empty"),
        pytest.param(b"\x82\xa2id\x01", Codec.MSGPACK, CLOSE, id="msgpack-truncated"),
        pytest.param(b"\xdd\xff\xff\xff\xff", Codec.MSGPACK, CLOSE, id="msgpack-claims-4G-items"),
        pytest.param(packb({"id": 1, "op": "ping"}) + b"\x00", Codec.MSGPACK, CLOSE, id="msgpack-extra-data"),
        pytest.param(packb([1, "ping"]), Codec.MSGPACK, CLOSE, id="msgpack-array"),
        pytest.param(packb({1: 1, "op": "ping"}), Codec.MSGPACK, CLOSE, id="msgpack-int-key"),
        pytest.param(
            packb({"id": 9, "op": "publish", "channel": "room:a", "data": {1: 1}}),
            Codec.MSGPACK,
            CLOSE,
            id="msgpack-int-key-in-data",
        ),
        pytest.param(
            b"\x82\xa2id\x01\xa2op\xa4\xff\xfe\xfd\xfc", Codec.MSGPACK, CLOSE, id="msgpack-invalid-utf8"
        ),
        pytest.param(packb({"id": 1.0, "op": "ping"}), Codec.MSGPACK, CLOSE, id="msgpack-float-id"),
        pytest.param(packb({"id": 2**64 - 1, "op": "ping"}), Codec.MSGPACK, CLOSE, id="msgpack-uint64-id"),
        pytest.param(packb({"id": b"\x01", "op": "ping"}), Codec.MSGPACK, CLOSE, id="msgpack-bin-id"),
        pytest.param(b"\x91" * 5000 + b"\xc0", Codec.MSGPACK, CLOSE, id="msgpack-nested-5000-deep"),
        # A command with an id but something wrong: an error reply, the connection goes on.
        pytest.param({"id": 9}, Codec.JSON, 400, id="missing-op"),
        pytest.param({"id": 9, "op": 3}, Codec.JSON, 400, id="op-not-string"),
        pytest.param({"id": 9, "op": "PING"}, Codec.JSON, 400, id="op-wrong-case"),
        pytest.param({"id": 9, "op": "teleport"}, Codec.JSON, 400, id="unknown-op"),
        pytest.param({"id": 9, "op": "connect"}, Codec.JSON, 401, id="connect-without-token"),
        pytest.param({"id": 9, "op": "connect", "token": ""}, Codec.JSON, 401, id="connect-empty-token"),
        pytest.param({"id": 9, "op": "connect", "token": 7}, Codec.JSON, 401, id="connect-token-not-string"),
        pytest.param(
            {"id": 9, "op": "connect", "token": "t", "subscribe": "room:a"},
            Codec.JSON,
            400,
            id="subscribe-list-is-string",
        ),
        pytest.param(
            {"id": 9, "op": "connect", "token": "t", "subscribe": ["room:a"]},
            Codec.JSON,
            400,
            id="subscribe-item-not-object",
        ),
        pytest.param(
            {"id": 9, "op": "connect", "token": "t", "subscribe": [{"channel": "x"}]},
            Codec.JSON,
            400,
            id="subscribe-item-bad-channel",
        ),
        pytest.param(
            {"id": 9, "op": "connect", "token": "t", "subscribe": [{"channel": "room:a"}] * 1001},
            Codec.JSON,
            400,
            id="subscribe-list-too-long",
        ),
        pytest.param({"id": 9, "op": "subscribe"}, Codec.JSON, 400, id="subscribe-no-channel"),
        pytest.param({"id": 9, "op": "subscribe", "channel": 5}, Codec.JSON, 400, id="channel-not-string"),
        pytest.param({"id": 9, "op": "subscribe", "channel": ["room:a"]}, Codec.JSON, 400, id="channel-list"),
        pytest.param(
            {"id": 9, "op": "subscribe", "channel": "room:a", "since": 3},
            Codec.JSON,
            400,
            id="since-not-object",
        ),
        pytest.param(
            {"id": 9, "op": "subscribe", "channel": "room:a", "since": {"offset": 1}},
            Codec.JSON,
            400,
            id="since-no-epoch",
        ),
        pytest.param(
            {"id": 9, "op": "subscribe", "channel": "room:a", "since": {"epoch": 1, "offset": 1}},
            Codec.JSON,
            400,
            id="since-epoch-int",
        ),
        pytest.param(
            {"id": 9, "op": "subscribe", "channel": "room:a", "since": {"epoch": "e" * 65, "offset": 1}},
            Codec.JSON,
            400,
            id="since-epoch-too-long",
        ),
        pytest.param(
            {"id": 9, "op": "subscribe", "channel": "room:a", "since": {"epoch": "e"}},
            Codec.JSON,
            400,
            id="since-no-offset",
        ),
        pytest.param(
            {"id": 9, "op": "subscribe", "channel": "room:a", "since": {"epoch": "e", "offset": -1}},
            Codec.JSON,
            400,
            id="since-negative",
        ),
        pytest.param(
            {"id": 9, "op": "subscribe", "channel": "room:a", "since": {"epoch": "e", "offset": 1.5}},
            Codec.JSON,
            400,
            id="since-float",
        ),
        pytest.param(
            {"id": 9, "op": "subscribe", "channel": "room:a", "since": {"epoch": "e", "offset": True}},
            Codec.JSON,
            400,
            id="since-bool",
        ),
        pytest.param(
            {"id": 9, "op": "subscribe", "channel": "room:a", "since": {"epoch": "e", "offset": "3"}},
            Codec.JSON,
            400,
            id="since-string",
        ),
        pytest.param(
            {"id": 9, "op": "subscribe", "channel": "room:a", "since": {"epoch": "e", "offset": 2**53}},
            Codec.JSON,
            400,
            id="since-huge",
        ),
        pytest.param({"id": 9, "op": "unsubscribe"}, Codec.JSON, 400, id="unsubscribe-no-channel"),
        pytest.param(
            {"id": 9, "op": "presence", "channel": "nowhere"}, Codec.JSON, 400, id="presence-bad-channel"
        ),
        pytest.param({"id": 9, "op": "publish", "channel": "room:a"}, Codec.JSON, 400, id="publish-no-data"),
        pytest.param({"id": 9, "op": "publish", "data": 1}, Codec.JSON, 400, id="publish-no-channel"),
        pytest.param(
            {"id": 9, "op": "publish", "channel": "room:a", "data": 1, "ephemeral": "yes"},
            Codec.JSON,
            400,
            id="ephemeral-not-bool",
        ),
        pytest.param(
            {"id": 9, "op": "publish", "channel": "room:a", "data": 1, "ephemeral": 1},
            Codec.JSON,
            400,
            id="ephemeral-int",
        ),
        pytest.param(
            {"id": 9, "op": "publish", "channel": "room:a", "data": 2**64},
            Codec.JSON,
            400,
            id="data-int-above-64-bit",
        ),
        pytest.param(
            {"id": 9, "op": "publish", "channel": "room:a", "data": -(2**63) - 1},
            Codec.JSON,
            400,
            id="data-int-below-64-bit",
        ),
        pytest.param(
            {"id": 9, "op": "publish", "channel": "room:a", "data": "\ud800"},
            Codec.JSON,
            400,
            id="data-lone-surrogate",
        ),
        pytest.param(
            '{"id": 9, "op": "publish", "channel": "room:a", "data": {"\\udfff": 1}}',
            Codec.JSON,
            400,
            id="data-key-lone-surrogate",
        ),
        pytest.param(
            {"id": 9, "op": "publish", "channel": "room:a", "data": nested(33)},
            Codec.JSON,
            400,
            id="data-33-deep",
        ),
        pytest.param(
            packb({"id": 9, "op": "publish", "channel": "room:a", "data": b"\x00"}),
            Codec.MSGPACK,
            400,
            id="data-binary",
        ),
        pytest.param(
            packb({"id": 9, "op": "publish", "channel": "room:a", "data": {b"k": 1}}),
            Codec.MSGPACK,
            400,
            id="data-binary-key",
        ),
        pytest.param(
            packb({"id": 9, "op": "publish", "channel": "room:a", "data": msgpack.ExtType(5, b"x")}),
            Codec.MSGPACK,
            400,
            id="data-ext-type",
        ),
        pytest.param(
            b"\x84\xa2id\x09\xa2op\xa7publish\xa7channel\xa6room:a\xa4data\xd6\xff\x00\x00\x00\x01",
            Codec.MSGPACK,
            400,
            id="data-timestamp",
        ),
        pytest.param(
            packb({"id": 9, "op": "publish", "channel": "room:a", "data": math.nan}),
            Codec.MSGPACK,
            400,
            id="data-nan",
        ),
        pytest.param(
            packb({"id": 9, "op": "publish", "channel": "room:a", "data": [math.inf]}),
            Codec.MSGPACK,
            400,
            id="data-infinity",
        ),
        pytest.param(
            {"id": 9, "op": "history", "channel": "room:a", "limit": 0}, Codec.JSON, 400, id="limit-zero"
        ),
        pytest.param(
            {"id": 9, "op": "history", "channel": "room:a", "limit": 1001},
            Codec.JSON,
            400,
            id="limit-above-1000",
        ),
        pytest.param(
            {"id": 9, "op": "history", "channel": "room:a", "limit": -5}, Codec.JSON, 400, id="limit-negative"
        ),
        pytest.param(
            {"id": 9, "op": "history", "channel": "room:a", "limit": 2.5}, Codec.JSON, 400, id="limit-float"
        ),
        pytest.param(
            {"id": 9, "op": "history", "channel": "room:a", "limit": "10"}, Codec.JSON, 400, id="limit-string"
        ),
        pytest.param(
            {"id": 9, "op": "history", "channel": "room:a", "limit": True}, Codec.JSON, 400, id="limit-bool"
        ),
        pytest.param(
            {"id": 9, "op": "history", "channel": "room:a", "limit": None}, Codec.JSON, 400, id="limit-null"
        ),
        pytest.param(
            {"id": 9, "op": "history", "channel": "room:a", "reverse": "true"},
            Codec.JSON,
            400,
            id="reverse-string",
        ),
        pytest.param(
            {"id": 9, "op": "history", "channel": "room:a", "since": []},
            Codec.JSON,
            400,
            id="history-since-list",
        ),
        pytest.param(
            {"id": 9, "op": "notifications", "limit": 201}, Codec.JSON, 400, id="notifications-limit"
        ),
        pytest.param(
            {"id": 9, "op": "notifications", "before": 17}, Codec.JSON, 400, id="notifications-before-int"
        ),
        pytest.param(
            {"id": 9, "op": "notifications", "unread_only": 1}, Codec.JSON, 400, id="unread-only-int"
        ),
        pytest.param({"id": 9, "op": "read"}, Codec.JSON, 400, id="read-nothing"),
        pytest.param({"id": 9, "op": "read", "ids": "n1"}, Codec.JSON, 400, id="read-ids-string"),
        pytest.param({"id": 9, "op": "read", "ids": [1, 2]}, Codec.JSON, 400, id="read-ids-ints"),
        pytest.param({"id": 9, "op": "read", "ids": [""]}, Codec.JSON, 400, id="read-empty-id"),
        pytest.param({"id": 9, "op": "read", "ids": ["n"] * 1001}, Codec.JSON, 400, id="read-too-many-ids"),
        pytest.param({"id": 9, "op": "read", "all": "yes"}, Codec.JSON, 400, id="read-all-string"),
    ]


@pytest.mark.parametrize(("frame", "codec", "expected"), frame_cases())
def test_malformed_frame(frame: Any, codec: Codec, expected: Any) -> None:
    """Frames that cannot be read close the connection (4500); bad commands get an error reply for their id."""
    if isinstance(frame, dict):
        frame = codec.encode(frame)
    with pytest.raises(ProtocolError) as caught:
        decode_command(frame, codec, max_size=MAX_SIZE)
    error = caught.value
    assert error.message and "Traceback" not in error.message
    if expected == CLOSE:
        assert error.close_code == CLOSE_PROTOCOL_VIOLATION
    else:
        assert (error.close_code, error.code, error.id) == (None, expected, 9)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_oversized_frame_is_413_for_id_0_before_parsing(codec: Codec) -> None:
    """A frame over max_size is refused with 413 (reply id 0) without being parsed, even if it is garbage."""
    frame: str | bytes = "x" * 101 if codec is Codec.JSON else b"\xc1" * 101
    with pytest.raises(ProtocolError) as caught:
        decode_command(frame, codec, max_size=100)
    assert (caught.value.code, caught.value.close_code, caught.value.id) == (413, None, 0)


def test_oversized_text_is_measured_in_utf8_bytes() -> None:
    """50 four-byte characters are 200 bytes, not 50."""
    with pytest.raises(ProtocolError) as caught:
        decode_command('{"id":1,"op":"ping","x":"' + "😀" * 50 + '"}', Codec.JSON, max_size=150)
    assert caught.value.code == 413


@pytest.mark.parametrize(
    "channel",
    [
        "room:a",
        "room:General_chat-2.0",
        "room:a@b.c",
        "user:42",
        "user:alice@example.com",
        "dm:alice:bob",
        "broadcast",
        "room:" + "x" * 200,
    ],
)
def test_valid_channel_names(channel: str) -> None:
    """Namespaced names of letters, digits and _.@- are channels."""
    assert Channel.parse(channel).text == channel


@pytest.mark.parametrize(
    "channel",
    [
        None,
        5,
        "",
        "room",
        "room:",
        "room:a b",
        "room:a\n",
        "room:a\x00",
        "room:é",
        "room:a/b",
        "room:{a}",
        "Room:a",
        "chat:a",
        "broadcast:x",
        "broadcasts",
        ":a",
        "room::a",
        "dm:a:b:c",
        "user:" + "x" * 201,
        "room:" + "x" * 100 + ":" + "y" * 151,
    ],
)
def test_invalid_channel_names(channel: object) -> None:
    """Anything else is a 400 naming the expected forms."""
    with pytest.raises(ProtocolError) as caught:
        Channel.parse(channel)
    assert caught.value.code == 400 and caught.value.close_code is None
    assert "channel" in caught.value.message


@pytest.mark.parametrize(
    ("value", "field_name"),
    [({"epoch": "e", "offset": -1}, "since"), ("x", "position")],
)
def test_stream_position_errors_name_the_field(value: object, field_name: str) -> None:
    """StreamPosition.parse names the field it was reading in its message."""
    with pytest.raises(ProtocolError, match=field_name):
        StreamPosition.parse(value, field_name=field_name)


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [
        (1000, True),
        (1006, True),
        (CLOSE_NODE_SHUTDOWN, True),
        (CLOSE_TOO_SLOW, True),
        (CLOSE_RATE_LIMITED, True),
        (4499, True),
        (CLOSE_PROTOCOL_VIOLATION, False),
        (CLOSE_UNAUTHENTICATED, False),
        (CLOSE_FORBIDDEN, False),
        (4999, False),
    ],
)
def test_close_code_carries_the_reconnect_policy(code: int, reconnect: bool) -> None:
    """4000-4499 (and transport losses) reconnect; 4500-4999 are terminal; the disconnect push says which."""
    assert close_reconnects(code) is reconnect
    assert Disconnect(code, "why").push() == {
        "push": "disconnect",
        "code": code,
        "reason": "why",
        "reconnect": reconnect,
    }


def test_error_reply_and_publication_push_shapes() -> None:
    """Replies and pushes have exactly the fields of DESIGN.md; an ephemeral publication has no epoch/offset."""
    assert error_reply(7, 403, "no", temporary=False) == {
        "id": 7,
        "error": {"code": 403, "message": "no", "temporary": False},
    }
    assert ok_reply(7, {}) == {"id": 7, "result": {}}
    sender = {"user": "u", "client": "c"}
    assert publication_push("room:a", "e", 3, {"t": 1}, sender, 99) == {
        "push": "publication",
        "channel": "room:a",
        "epoch": "e",
        "offset": 3,
        "data": {"t": 1},
        "from": sender,
        "ts": 99,
    }
    assert publication_push("room:a", "", None, 1, None, 5) == {
        "push": "publication",
        "channel": "room:a",
        "data": 1,
        "ts": 5,
    }


@pytest.mark.parametrize(
    "reason",
    ["ü" * 100, "😀" * 40, "a" * 122 + "é", "x" * 200, "\ud800" * 3, "short"],
    ids=["2-byte", "4-byte", "cut-inside-a-character", "ascii", "lone-surrogates", "short"],
)
def test_every_close_reason_fits_a_close_frame(reason: str) -> None:
    """Disconnect cuts its reason to at most 123 UTF-8 bytes of whole characters (RFC 6455 5.5)."""
    whole = reason.encode("utf-8", "replace")  # a lone surrogate becomes "?"
    cut = Disconnect(4503, reason).reason.encode()  # raises on a lone surrogate
    assert len(cut) <= 123 and whole.startswith(cut)
    assert cut == whole or len(cut) > 123 - 4  # no more than the one character cut in two is dropped


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"op": "notifications", "before": "\ud800"}, "before"),
        ({"op": "read", "ids": ["ok", "x\udfff"]}, "ids"),
        ({"op": "subscribe", "channel": "room:a", "since": {"epoch": "\ud800", "offset": 1}}, "since.epoch"),
        ({"op": "history", "channel": "room:a", "since": {"epoch": "e\ud800", "offset": 1}}, "since.epoch"),
        ({"op": "connect", "token": "t", "subscribe": [{"channel": "room:a", "since": {"epoch": "\udc00", "offset": 0}}]}, "since.epoch"),
    ],
)  # fmt: skip
def test_identifiers_holding_a_lone_surrogate_are_400(message: dict[str, Any], field: str) -> None:
    """JSON's "\\ud800" escape decodes to text no Redis argument or UTF-8 frame can carry: a 400 naming the field."""
    frame = json.dumps({"id": 9, **message})  # ensure_ascii: the surrogate travels as an escape
    with pytest.raises(ProtocolError) as caught:
        decode_command(frame, Codec.JSON, max_size=MAX_SIZE)
    assert caught.value.code == 400 and caught.value.close_code is None and caught.value.id == 9
    assert field in caught.value.message


@pytest.mark.parametrize(
    "channel", ["user:a:b", "user:" + "x" * 101, "dm:a", "dm:a:b:c", "dm:" + "x" * 101 + ":y", "dm:a::b"]
)
def test_user_and_dm_channels_name_valid_user_ids(channel: str) -> None:
    """user:<id> and dm:<a>:<b> hold ids of the one user-id rule (no ':', at most 100 characters)."""
    with pytest.raises(ProtocolError) as caught:
        Channel.parse(channel)
    assert caught.value.code == 400
