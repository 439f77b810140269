"""One RESP2 command over a plain socket: what the local topologies need to form and watch servers.

No client library: the admin commands used here (``CLUSTER ...``, ``SENTINEL ...``, ``ROLE``,
``MIGRATE``) come back exactly as the server sent them, with no client-side parsing that could
change between library versions, and one call is one short-lived connection, so a dead server
costs one refused connect rather than a pool's retries.

Guarantees: every call has a deadline (``timeout`` covers connect, send and each read); an
error reply raises :class:`RespError`; a refused, reset or timed-out connection raises
:class:`OSError`. Strings travel as UTF-8 with ``surrogateescape`` both ways, so a key read
from the server (``CLUSTER GETKEYSINSLOT``) and sent back (``MIGRATE``) is the same bytes.
"""

from __future__ import annotations

import socket
from typing import BinaryIO

__all__ = ["Reply", "RespError", "command", "text"]

Reply = str | int | None | list["Reply"]


class RespError(Exception):
    """The server answered with an error reply (``-ERR ...``, ``-MOVED ...``, ``-ASK ...``)."""


def _encode(args: tuple[str | int | bytes, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode(errors="surrogateescape")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read(stream: BinaryIO) -> Reply:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, body = line[:1], line[1:-2].decode(errors="surrogateescape")
    if kind == b"+":
        return body
    if kind == b"-":
        raise RespError(body)
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("connection closed in the middle of a reply")
        return data[:-2].decode(errors="surrogateescape")
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_read(stream) for _ in range(size)]
    raise ConnectionError(f"not a RESP2 reply: {line[:40]!r}")


def command(port: int, *args: str | int | bytes, timeout: float = 2.0) -> Reply:
    """Send one command to the server on ``127.0.0.1:port`` and return its reply.

    Raises:
        RespError: the server answered with an error.
        OSError: no connection, or no complete reply within ``timeout`` seconds per step.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(_encode(args))
        with sock.makefile("rb") as stream:
            return _read(stream)


def text(reply: Reply) -> str:
    """A reply that must be a string (``CLUSTER INFO``, ``INFO``, ``CLUSTER MYID``)."""
    if not isinstance(reply, str):
        raise TypeError(f"expected a string reply, got {reply!r}")
    return reply
