"""The fast write path: frames built by wire.py are valid RFC 6455 frames, and real connections use it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from tidings.client import Connection
from tidings.server.transport.frames import OPCODE_BINARY, OPCODE_TEXT, encode_frame, wire_bytes

from .support.timing import UNIT


def parse_server_frame(data: bytes) -> Frame:
    """Parse ``data`` as a client would (websockets' own parser, unmasked server frame)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


@given(st.binary(max_size=70_000))
def test_binary_frames_parse_back_with_every_length_encoding(payload: bytes) -> None:
    """Payloads under 126, under 65536 and above each round-trip through websockets' parser."""
    frame = parse_server_frame(encode_frame(payload, OPCODE_BINARY))
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frames_at_length_boundaries(size: int) -> None:
    """Text frames at the 7-bit, 16-bit and 64-bit length boundaries carry their UTF-8 payload."""
    text = "é" * (size // 2) + "a" * (size % 2)
    frame = parse_server_frame(wire_bytes(text))
    assert frame.opcode is Opcode.TEXT and frame.data.decode() == text


def test_wire_bytes_reuses_the_frame_for_the_same_message_only() -> None:
    """The same message object gives the same bytes object; an equal but different one is rebuilt."""
    message = '{"push":"publication"}'
    first = wire_bytes(message)
    assert wire_bytes(message) is first
    other = "".join(['{"push":', '"publication"}'])
    assert wire_bytes(other) == first and wire_bytes(other) is not first
    assert parse_server_frame(encode_frame(b"x", OPCODE_TEXT)).data == b"x"


async def test_real_connections_write_through_the_fast_path(node, token) -> None:
    """Under uvicorn's websockets-sansio, every connection writes frames straight to the transport."""
    async with Connection(node.ws_url, token("alice")) as alice:
        hub = node.server.lifespan.state["hub"]
        (connection,) = [c for c in hub.connections.values() if c.client_id == alice.info["client"]]
        assert connection._direct is not None
        await alice.subscribe("room:w")
        await alice.publish("room:w", {"n": 1})
        push = await alice.publications("room:w", timeout=5 * UNIT)
        assert push["data"] == {"n": 1}
