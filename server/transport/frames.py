"""The fast write path: complete WebSocket frames written straight to uvicorn's transport.

Per DESIGN.md "Performance shape", the per-delivery cost is what matters: going
through ASGI ``send`` costs a task wake-up, a coroutine and websockets' frame
builder per frame per subscriber. Here a server frame (RFC 6455 5.2: FIN set,
unmasked) is built once and, when the same frame goes to many subscribers in a
row, its bytes are reused for all of them.

Minor layering violation, on purpose: uvicorn's ASGI ``send`` for the
websockets-sansio implementation is a bound method of its protocol object, which
owns the transport and the websockets connection state. :func:`attach` takes
that object only when it looks exactly as expected (and no extension such as
permessage-deflate was negotiated); otherwise the connection keeps using ASGI
``send``, which is always correct.
"""

from __future__ import annotations

import struct
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

__all__ = ["DirectTransport", "attach", "encode_frame", "release_handshake"]

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2


def encode_frame(payload: bytes, opcode: int) -> bytes:
    """One unfragmented, unmasked server frame (RFC 6455 5.2: servers never mask)."""
    length = len(payload)
    first = 0x80 | opcode  # FIN + opcode
    if length < 126:
        header = bytes((first, length))
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload


# One-entry cache: the hub queues the same frame object for every subscriber of a publication and the
# flushes run back to back, so the wire bytes are built once per publication (per codec), not per
# subscriber. The cache holds a strong reference to its key, so ``is`` cannot match a recycled object.
_cached_frame: object = None
_cached_wire: bytes = b""


def wire_bytes(frame: str | bytes) -> bytes:
    """The frame for ``frame`` (a JSON text or a MessagePack binary message), cached for repeats."""
    global _cached_frame, _cached_wire
    if frame is _cached_frame:
        return _cached_wire
    if isinstance(frame, str):
        wire = encode_frame(frame.encode(), OPCODE_TEXT)
    else:
        wire = encode_frame(frame, OPCODE_BINARY)
    _cached_frame, _cached_wire = frame, wire
    return wire


class DirectTransport:
    """Writes whole frames to a uvicorn websockets-sansio connection without awaiting."""

    __slots__ = ("_conn", "_protocol", "_transport", "_writable")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._writable = protocol.writable
        self._conn = protocol.conn

    def try_write(self, data: bytes) -> bool:
        """Write ``data`` now if the socket takes it; False means "use ASGI send" (paused or closing)."""
        if (
            not self._writable.is_set()
            or self._protocol.close_sent
            or self._conn.state is not State.OPEN
            or self._transport.is_closing()
        ):
            return False
        self._transport.write(data)
        return True

    def abort(self) -> None:
        self._transport.abort()


def attach(asgi_send: Any) -> DirectTransport | None:
    """A DirectTransport for ``asgi_send`` if it is uvicorn's websockets-sansio ``send``, else None."""
    protocol = getattr(asgi_send, "__self__", None)
    if not isinstance(protocol, WebSocketsSansIOProtocol):
        return None
    conn = getattr(protocol, "conn", None)
    if (
        conn is None
        or getattr(conn, "extensions", None)  # e.g. permessage-deflate: frames must go through websockets
        or not hasattr(protocol, "transport")
        or not hasattr(protocol, "writable")
        or not hasattr(protocol, "close_sent")
    ):
        return None
    return DirectTransport(protocol)


def release_handshake(asgi_send: Any) -> None:
    """Drop uvicorn's copies of the handshake request and response once the socket is open.

    uvicorn keeps both (headers included) for the connection's whole life although it
    never reads them again after the accept: about 3 KiB per idle connection
    (DESIGN.md: memory per idle connection is part of the bar).
    """
    protocol = getattr(asgi_send, "__self__", None)
    if isinstance(protocol, WebSocketsSansIOProtocol) and protocol.handshake_complete:
        request: Any = protocol.request
        protocol.request = protocol.response = None  # type: ignore[assignment]
        # websockets' parser generator keeps the request in a local variable for the connection's
        # whole life; emptying its headers frees what the reference would otherwise keep alive.
        if request is not None:
            request.headers.clear()
