"""A lean asyncio WebSocket client for the benchmark, so that receiving costs the bench little.

websockets' sans-I/O :class:`~websockets.client.ClientProtocol` does the opening
handshake and frames (and masks) everything we send. Incoming frames are parsed
here in one loop inside ``data_received`` and each message goes straight to a
callback: no task, queue or future per message. With the full asyncio client the
bench spent about 60 µs of its own CPU per delivery and became the bottleneck long
before the server did.

Scope: what a Tidings node sends. Unmasked server frames, text/binary messages
(fragmented ones reassembled), ping (answered with pong), close (answered, then
the transport is closed). No extensions (no permessage-deflate).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

__all__ = ["FastWebSocket", "HandshakeError", "open_websocket"]

OnMessage = Callable[[bytes, bool], None]  # (payload, is_text): text stays UTF-8 bytes
OnClose = Callable[[int], None]

_TEXT, _BINARY, _CLOSE, _PING, _CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0x0


class HandshakeError(Exception):
    """The server did not switch protocols."""


class FastWebSocket(asyncio.Protocol):
    """One client connection. Set ``on_message`` / ``on_close`` to receive; ``send`` to send.

    ``on_message(payload, is_text)`` gets each whole message as bytes (text frames undecoded:
    the caller may skip decoding a payload it has seen before).
    """

    __slots__ = (
        "_buffer",
        "_fragments",
        "_fragments_opcode",
        "_protocol",
        "close_code",
        "on_close",
        "on_message",
        "opened",
        "transport",
    )

    def __init__(self, uri: str, subprotocol: str | None) -> None:
        self._protocol = ClientProtocol(
            parse_uri(uri), subprotocols=[Subprotocol(subprotocol)] if subprotocol else None, max_size=None
        )
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragments_opcode = 0
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_message: OnMessage = _ignore
        self.on_close: OnClose = _ignore
        self.close_code: int | None = None

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._protocol.send_request(self._protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self._handshake(data)
            return
        self._buffer += data
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError("connection lost during the handshake"))
        if self.close_code is None:
            self.close_code = 1006
            self.on_close(1006)

    # --- sending -----------------------------------------------------------------------------------

    def send(self, message: str | bytes) -> None:
        """Queue one message (text for ``str``); never blocks: the transport buffers."""
        if isinstance(message, str):
            self._protocol.send_text(message.encode())
        else:
            self._protocol.send_binary(message)
        self._flush()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.close_code is None:
                self._protocol.send_close(1000)
                self._flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            chunks = self._protocol.data_to_send()
            if chunks:
                # One write: uvloop's writelines costs a syscall per chunk (header and payload apart).
                self.transport.write(b"".join(chunks))

    # --- receiving ---------------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        self._protocol.receive_data(data)
        for event in self._protocol.events_received():
            if isinstance(event, Response):
                if event.status_code != 101 or self._protocol.handshake_exc is not None:
                    self.opened.set_exception(HandshakeError(f"HTTP {event.status_code}"))
                    return
                self.opened.set_result(None)
            elif isinstance(event, Frame):  # frames that came with the response (servers speak only after us)
                self._message(event.opcode.value, bool(event.fin), bytes(event.data))

    def _parse(self) -> None:
        buffer = self._buffer
        size = len(buffer)
        pos = 0
        while size - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            if second & 0x80:
                self._fail(1002, "masked frame from the server")  # RFC 6455 5.1
                return
            end = pos + head + length
            if end > size:
                break
            payload = bytes(buffer[pos + head : end])
            pos = end
            self._message(first & 0x0F, bool(first & 0x80), payload)
        del buffer[:pos]

    def _message(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode in (_TEXT, _BINARY):
            if fin:
                self.on_message(payload, opcode == _TEXT)
            else:
                self._fragments, self._fragments_opcode = [payload], opcode
        elif opcode == _CONTINUATION:
            self._fragments.append(payload)
            if fin:
                whole = b"".join(self._fragments)
                self._fragments = []
                self.on_message(whole, self._fragments_opcode == _TEXT)
        elif opcode == _PING:
            self._protocol.send_pong(payload)
            self._flush()
        elif opcode == _CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._closed(code)

    def _closed(self, code: int) -> None:
        if self.close_code is not None:
            return
        self.close_code = code
        try:
            self._protocol.send_close(code if 1000 <= code < 5000 and code not in (1005, 1006) else 1000)
            self._flush()
        except Exception:  # the sans-I/O state may already be closing; the transport closes anyway
            pass
        if self.transport is not None:
            self.transport.close()
        self.on_close(code)

    def _fail(self, code: int, reason: str) -> None:
        self._closed(code)


def _ignore(*args: Any) -> None:
    pass


async def open_websocket(uri: str, subprotocol: str | None, *, open_timeout: float = 30.0) -> FastWebSocket:
    """Connect and complete the opening handshake.

    Raises:
        HandshakeError, OSError, TimeoutError
    """
    parsed = parse_uri(uri)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(open_timeout):
        _, connection = await loop.create_connection(
            lambda: FastWebSocket(uri, subprotocol), parsed.host, parsed.port, ssl=parsed.secure or None
        )
        await connection.opened
    return connection
