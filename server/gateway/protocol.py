"""Wire protocol v1: codes, codecs, replies and pushes, in JSON and MessagePack.

This module is pure: it imports nothing from asyncio, Starlette or Redis, so the
Python client shares it with the server. The commands a client sends and their
decoding are in ``client_commands.py``; channel names in ``server/channels.py``.

Errors:
    ProtocolError
        raised for any input that does not follow the protocol. It carries either
        a reply ``code`` (400, 403, 413, ...: the connection goes on) or a
        ``close_code`` (4500 ...: the connection is closed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, TypeAlias, TypeGuard

import msgpack

from tidings.server.errors import TidingsError

__all__ = [
    "CLOSE_FORBIDDEN",
    "CLOSE_NODE_SHUTDOWN",
    "CLOSE_PROTOCOL_VIOLATION",
    "CLOSE_RATE_LIMITED",
    "CLOSE_TOO_SLOW",
    "CLOSE_UNAUTHENTICATED",
    "ERR_BACKPLANE",
    "ERR_BAD_REQUEST",
    "ERR_FORBIDDEN",
    "ERR_INTERNAL",
    "ERR_NOT_FOUND",
    "ERR_RATE_LIMITED",
    "ERR_TOO_LARGE",
    "ERR_UNAUTHENTICATED",
    "SUBPROTOCOL_JSON",
    "SUBPROTOCOL_MSGPACK",
    "Codec",
    "Disconnect",
    "Frame",
    "ProtocolError",
    "StreamPosition",
    "check_data",
    "close_reason",
    "close_reconnects",
    "error_reply",
    "is_int",
    "is_notification_id",
    "is_unicode",
    "ok_reply",
    "publication_push",
]

SUBPROTOCOL_JSON: Final = "tidings.json"
SUBPROTOCOL_MSGPACK: Final = "tidings.msgpack"

# Reply error codes (DESIGN.md "Wire protocol v1").
ERR_BAD_REQUEST: Final = 400
ERR_UNAUTHENTICATED: Final = 401
ERR_FORBIDDEN: Final = 403
ERR_NOT_FOUND: Final = 404
ERR_TOO_LARGE: Final = 413
ERR_RATE_LIMITED: Final = 429
ERR_INTERNAL: Final = 500
ERR_BACKPLANE: Final = 503

# Close codes: 4000-4499 "reconnect with backoff and recover", 4500-4999 "do not reconnect".
CLOSE_NODE_SHUTDOWN: Final = 4001
CLOSE_TOO_SLOW: Final = 4008
CLOSE_RATE_LIMITED: Final = 4029
CLOSE_PROTOCOL_VIOLATION: Final = 4500
CLOSE_UNAUTHENTICATED: Final = 4501
CLOSE_FORBIDDEN: Final = 4503

MAX_ID: Final = 2**53 - 1  # the largest integer JavaScript represents exactly
MAX_HISTORY_LIMIT: Final = 1000
MAX_READ_IDS: Final = 1000
MAX_NOTIFICATION_ID_LENGTH: Final = 64
# RFC 6455 5.5: a control frame carries at most 125 bytes; a close frame's code takes 2 of them.
MAX_CLOSE_REASON_BYTES: Final = 123


def close_reconnects(code: int) -> bool:
    """Whether a client closed with ``code`` should reconnect (with backoff) and recover: all but 4500-4999."""
    return not 4500 <= code <= 4999


class ProtocolError(TidingsError):
    """Input that breaks the protocol.

    Exactly one of ``code`` (an error reply; the connection goes on) and
    ``close_code`` (the connection is closed) is meaningful: ``close_code`` wins
    when set. ``message`` is safe to show the peer; it never holds exception text.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = ERR_BAD_REQUEST,
        close_code: int | None = None,
        id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.close_code = close_code
        self.id = id  # the command's id when it could be read, so the error can be a reply


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A position in a channel's history: the stream's life (``epoch``) and an offset in it."""

    epoch: str
    offset: int

    @classmethod
    def parse(cls, value: object, *, field_name: str = "since") -> StreamPosition:
        if not isinstance(value, Mapping):
            raise ProtocolError(f"{field_name} must be an object with epoch and offset")
        epoch, offset = value.get("epoch"), value.get("offset")
        if not isinstance(epoch, str) or len(epoch) > 64 or not is_unicode(epoch):
            raise ProtocolError(f"{field_name}.epoch must be a string")
        if not is_int(offset) or not 0 <= offset <= MAX_ID:
            raise ProtocolError(f"{field_name}.offset must be a non-negative integer")
        return cls(epoch, offset)

    def encode(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset}


Frame: TypeAlias = str | bytes
"""One encoded WebSocket message: text (JSON) or binary (MessagePack)."""


# --- codecs -----------------------------------------------------------------------------------------


class Codec(Enum):
    """How a connection's frames are encoded; chosen by the WebSocket subprotocol."""

    JSON = SUBPROTOCOL_JSON
    MSGPACK = SUBPROTOCOL_MSGPACK

    @classmethod
    def negotiate(cls, offered: Sequence[str]) -> Codec:
        """Pick the codec for the client's offered subprotocols (first known one; none means JSON)."""
        for name in offered:
            if name == SUBPROTOCOL_MSGPACK:
                return cls.MSGPACK
            if name == SUBPROTOCOL_JSON:
                return cls.JSON
        return cls.JSON

    def encode(self, message: Mapping[str, Any]) -> Frame:
        """Encode one message: ``str`` for JSON (a text frame), ``bytes`` for MessagePack (binary)."""
        if self is Codec.JSON:
            return _json_dumps(message)
        return _msgpack_dumps(message)  # type: ignore[no-any-return]

    def join(self, encoded: Sequence[Frame]) -> Frame:
        """Put several encoded messages in one frame: JSON joined by newlines, MessagePack back to back."""
        if len(encoded) == 1:
            return encoded[0]
        if self is Codec.JSON:
            return "\n".join(encoded)  # type: ignore[arg-type]
        return b"".join(encoded)  # type: ignore[arg-type]

    def split(self, frame: bytes | str) -> list[Any]:
        """Decode every message of one frame (the client side of :meth:`join`)."""
        if self is Codec.JSON:
            text = frame if isinstance(frame, str) else frame.decode()
            return [json.loads(line) for line in text.split("\n") if line.strip()]
        if isinstance(frame, str):
            raise ProtocolError("text frame on a MessagePack connection")
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(frame)
        return list(unpacker)


_json_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_msgpack_dumps = msgpack.Packer(use_bin_type=True).pack


def is_unicode(value: str) -> bool:
    """Whether ``value`` is valid Unicode, i.e. UTF-8 can carry it.

    JSON's "\\ud800" escape decodes to a lone surrogate, which no UTF-8 frame, MessagePack str
    or Redis argument can carry (redis-py raises UnicodeEncodeError on it).
    """
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def is_notification_id(value: str) -> bool:
    """Whether ``value`` can be a notification id (what ``read`` and ``before`` accept)."""
    return 0 < len(value) <= MAX_NOTIFICATION_ID_LENGTH and is_unicode(value)


def check_data(value: Any, depth: int = 0) -> None:
    """Raise ProtocolError (400) unless ``value`` survives both encodings unchanged.

    Allowed: null, booleans, 64-bit integers, finite floats, valid Unicode strings,
    lists, and objects with string keys, nested at most 32 deep.
    """
    if depth > 32:
        raise ProtocolError("data is nested too deeply")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_text(value)
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise ProtocolError("data holds an integer out of range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ProtocolError("data holds a non-finite number")
        return
    if isinstance(value, list):
        for item in value:
            check_data(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError("data keys must be strings")
            _check_text(key)
            check_data(item, depth + 1)
        return
    raise ProtocolError("data must be JSON-compatible (no binary)")


def _check_text(value: str) -> None:
    # One lone surrogate would break the shared frame of every subscriber (see is_unicode).
    if not is_unicode(value):
        raise ProtocolError("data holds a string that is not valid Unicode (lone surrogate)")


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an integer (and not a bool, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


# --- replies and pushes -----------------------------------------------------------------------------


def ok_reply(command_id: int, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": command_id, "result": result}


def error_reply(command_id: int, code: int, message: str, *, temporary: bool = False) -> dict[str, Any]:
    return {"id": command_id, "error": {"code": code, "message": message, "temporary": temporary}}


def publication_push(
    channel: str,
    epoch: str,
    offset: int | None,
    data: Any,
    sender: Mapping[str, str] | None,
    ts: int,
) -> dict[str, Any]:
    """The ``publication`` push; ``offset`` None marks an ephemeral publication (no epoch, no offset)."""
    push: dict[str, Any] = {"push": "publication", "channel": channel}
    if offset is not None:
        push["epoch"] = epoch
        push["offset"] = offset
    push["data"] = data
    if sender is not None:
        push["from"] = sender
    push["ts"] = ts
    return push


def close_reason(reason: str) -> str:
    """``reason`` cut to what a close frame carries: at most 123 UTF-8 bytes, whole characters.

    RFC 6455 5.5: a control frame's payload is at most 125 bytes, 2 of which are the code. A
    longer reason makes the close frame itself invalid, and the peer sees 1006 instead of the code
    that carries its reconnect policy. A lone surrogate (not UTF-8) becomes "?".
    """
    if reason.isascii() and len(reason) <= MAX_CLOSE_REASON_BYTES:
        return reason
    encoded = reason.encode("utf-8", "replace")[:MAX_CLOSE_REASON_BYTES]
    return encoded.decode("utf-8", "ignore")  # drops only a character cut in two at the end


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Why the server closes a connection; ``reconnect`` follows from the code's range.

    ``reason`` is cut by :func:`close_reason`, so the ``disconnect`` push and the close frame
    carry the same text.
    """

    code: int
    reason: str
    reconnect: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", close_reason(self.reason))
        object.__setattr__(self, "reconnect", close_reconnects(self.code))

    def push(self) -> dict[str, Any]:
        return {"push": "disconnect", "code": self.code, "reason": self.reason, "reconnect": self.reconnect}
