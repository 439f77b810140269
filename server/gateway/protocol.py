"""Wire protocol v1: commands, replies and pushes, in JSON and MessagePack.

This module is pure: it imports nothing from asyncio, Starlette or Redis, so the
Python client shares it with the server.

Errors:
    ProtocolError
        raised for any input that does not follow the protocol. It carries either
        a reply ``code`` (400, 403, 413, ...: the connection goes on) or a
        ``close_code`` (4500 ...: the connection is closed).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Literal, TypeAlias, TypeGuard

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
    "Command",
    "Connect",
    "Disconnect",
    "Frame",
    "History",
    "Notifications",
    "Ping",
    "Presence",
    "ProtocolError",
    "Publish",
    "Read",
    "StreamPosition",
    "Subscribe",
    "SubscribeRequest",
    "Unsubscribe",
    "check_channel",
    "check_data",
    "check_user",
    "close_reason",
    "close_reconnects",
    "decode_command",
    "error_reply",
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
MAX_CHANNEL_LENGTH: Final = 255
MAX_HISTORY_LIMIT: Final = 1000
MAX_READ_IDS: Final = 1000
MAX_NOTIFICATION_ID_LENGTH: Final = 64
MAX_USER_LENGTH: Final = 100
# RFC 6455 5.5: a control frame carries at most 125 bytes; a close frame's code takes 2 of them.
MAX_CLOSE_REASON_BYTES: Final = 123

# The one user-id rule (token sub, HTTP paths and bodies, dev tokens, user:<id> and dm:<a>:<b>).
# No ':' -- it separates the two ids of a dm: channel, so "a:b" could never sign in.
_USER: Final = r"[A-Za-z0-9_.@\-]{1,100}"  # {1,MAX_USER_LENGTH}
_USER_RE: Final = re.compile(_USER)
# A channel is a namespace and a name; the name may not contain whitespace or control characters.
_NAME: Final = r"[A-Za-z0-9_.@\-]{1,200}"
_CHANNEL_RE: Final = re.compile(rf"room:{_NAME}(:{_NAME})?|user:{_USER}|dm:{_USER}:{_USER}|broadcast")


def close_reconnects(code: int) -> bool:
    """Whether a client closed with ``code`` should reconnect (with backoff) and recover."""
    return code < 4000 or 4000 <= code < 4500


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
        if not _is_int(offset) or not 0 <= offset <= MAX_ID:
            raise ProtocolError(f"{field_name}.offset must be a non-negative integer")
        return cls(epoch, offset)

    def encode(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset}


# --- commands ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    channel: str
    since: StreamPosition | None = None


@dataclass(frozen=True, slots=True)
class Connect:
    id: int
    token: str
    subscribe: tuple[SubscribeRequest, ...] = ()
    op: Literal["connect"] = "connect"


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: int
    channel: str
    since: StreamPosition | None = None
    op: Literal["subscribe"] = "subscribe"


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: int
    channel: str
    op: Literal["unsubscribe"] = "unsubscribe"


@dataclass(frozen=True, slots=True)
class Publish:
    id: int
    channel: str
    data: Any
    ephemeral: bool = False
    op: Literal["publish"] = "publish"


@dataclass(frozen=True, slots=True)
class History:
    id: int
    channel: str
    since: StreamPosition | None = None
    limit: int = 100
    reverse: bool = False
    before: int | None = None  # only offsets below it (continues a newest-first read)
    op: Literal["history"] = "history"


@dataclass(frozen=True, slots=True)
class Presence:
    id: int
    channel: str
    op: Literal["presence"] = "presence"


@dataclass(frozen=True, slots=True)
class Notifications:
    id: int
    unread_only: bool = False
    limit: int = 50
    before: str | None = None
    op: Literal["notifications"] = "notifications"


@dataclass(frozen=True, slots=True)
class Read:
    id: int
    ids: tuple[str, ...] = ()
    all: bool = False
    op: Literal["read"] = "read"


@dataclass(frozen=True, slots=True)
class Ping:
    id: int
    op: Literal["ping"] = "ping"


Frame: TypeAlias = str | bytes
"""One encoded WebSocket message: text (JSON) or binary (MessagePack)."""

Command: TypeAlias = (
    Connect | Subscribe | Unsubscribe | Publish | History | Presence | Notifications | Read | Ping
)


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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads with any keyword argument builds a new JSONDecoder on every call.
_json_loads_strict = json.JSONDecoder(parse_constant=_reject_constant).decode


# --- decoding ---------------------------------------------------------------------------------------


def decode_command(frame: bytes | str, codec: Codec, *, max_size: int) -> Command:
    """Parse and validate one client frame.

    Args:
        frame: the frame as received: ``str`` for a text frame, ``bytes`` for a binary one.
        codec: the connection's codec.
        max_size: the largest frame accepted, in bytes.

    Returns:
        The command, with every field checked.

    Raises:
        ProtocolError: with ``close_code`` 4500 for frames that cannot be read as
            a command at all (garbage, wrong frame type, no integer id), and
            with a reply ``code`` (400, 413) and the command's ``id`` otherwise.
    """
    size = len(frame) if isinstance(frame, bytes) else len(frame.encode(errors="surrogatepass"))
    if size > max_size:
        # Too large to parse safely; the id cannot be trusted, so reply to id 0 and keep the connection.
        raise ProtocolError(
            f"frame of {size} bytes exceeds the limit of {max_size}", code=ERR_TOO_LARGE, id=0
        )
    message = _parse_frame(frame, codec)
    if not isinstance(message, dict):
        raise ProtocolError("a command must be an object", close_code=CLOSE_PROTOCOL_VIOLATION)
    command_id = message.get("id")
    if not _is_int(command_id) or not 0 < command_id <= MAX_ID:
        raise ProtocolError("a command needs a positive integer id", close_code=CLOSE_PROTOCOL_VIOLATION)
    try:
        return _build_command(command_id, message)
    except ProtocolError as exc:
        exc.id = command_id
        raise


def _parse_frame(frame: bytes | str, codec: Codec) -> Any:
    if codec is Codec.JSON:
        if isinstance(frame, bytes):
            raise ProtocolError("binary frame on a JSON connection", close_code=CLOSE_PROTOCOL_VIOLATION)
        try:
            return _json_loads_strict(frame)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("frame is not valid JSON", close_code=CLOSE_PROTOCOL_VIOLATION) from exc
    if isinstance(frame, str):
        raise ProtocolError("text frame on a MessagePack connection", close_code=CLOSE_PROTOCOL_VIOLATION)
    try:
        # unpackb bounds every string, array and map by the frame's own length (frames are size-checked).
        return msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError("frame is not valid MessagePack", close_code=CLOSE_PROTOCOL_VIOLATION) from exc


def _build_command(command_id: int, message: dict[str, Any]) -> Command:
    op = message.get("op")
    if op == "connect":
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("connect needs a token", code=ERR_UNAUTHENTICATED)
        return Connect(command_id, token, _subscribe_requests(message.get("subscribe")))
    if op == "subscribe":
        since = message.get("since")
        return Subscribe(
            command_id,
            check_channel(message.get("channel")),
            None if since is None else StreamPosition.parse(since),
        )
    if op == "unsubscribe":
        return Unsubscribe(command_id, check_channel(message.get("channel")))
    if op == "publish":
        if "data" not in message:
            raise ProtocolError("publish needs data")
        check_data(message["data"])
        return Publish(
            command_id,
            check_channel(message.get("channel")),
            message["data"],
            _optional_bool(message, "ephemeral"),
        )
    if op == "history":
        since = message.get("since")
        return History(
            command_id,
            check_channel(message.get("channel")),
            None if since is None else StreamPosition.parse(since),
            _optional_int(message, "limit", default=100, low=1, high=MAX_HISTORY_LIMIT),
            _optional_bool(message, "reverse"),
            _optional_int(message, "before", default=0, low=1, high=MAX_ID) if "before" in message else None,
        )
    if op == "presence":
        return Presence(command_id, check_channel(message.get("channel")))
    if op == "notifications":
        before = message.get("before")
        if before is not None and (
            not isinstance(before, str) or len(before) > MAX_NOTIFICATION_ID_LENGTH or not is_unicode(before)
        ):
            raise ProtocolError("before must be a notification id")
        return Notifications(
            command_id,
            _optional_bool(message, "unread_only"),
            _optional_int(message, "limit", default=50, low=1, high=200),
            before,
        )
    if op == "read":
        ids = message.get("ids", [])
        read_all = _optional_bool(message, "all")
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_READ_IDS
            or not all(isinstance(i, str) and is_notification_id(i) for i in ids)
        ):
            raise ProtocolError(f"ids must be a list of at most {MAX_READ_IDS} notification ids")
        if not ids and not read_all:
            raise ProtocolError("read needs ids or all: true")
        return Read(command_id, tuple(ids), read_all)
    if op == "ping":
        return Ping(command_id)
    if not isinstance(op, str):
        raise ProtocolError("a command needs an op")
    raise ProtocolError(f"unknown op {op[:32]!r}")


def _subscribe_requests(value: object) -> tuple[SubscribeRequest, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > 1000:
        raise ProtocolError("subscribe must be a list of {channel, since?}")
    requests = []
    for item in value:
        if not isinstance(item, dict):
            raise ProtocolError("subscribe must be a list of {channel, since?}")
        since = item.get("since")
        requests.append(
            SubscribeRequest(
                check_channel(item.get("channel")), None if since is None else StreamPosition.parse(since)
            )
        )
    return tuple(requests)


def check_channel(value: object) -> str:
    """Return ``value`` if it is a valid channel name; raise ProtocolError (400) otherwise."""
    if not isinstance(value, str) or not value:
        raise ProtocolError("channel must be a non-empty string")
    if len(value) > MAX_CHANNEL_LENGTH or _CHANNEL_RE.fullmatch(value) is None:
        raise ProtocolError("invalid channel name: expected room:<name>, user:<id>, dm:<a>:<b> or broadcast")
    return value


def check_user(value: object, field_name: str = "user") -> str:
    """Return ``value`` if it is a user id; raise ProtocolError (400) otherwise.

    The one rule for user ids, wherever one comes from (a token's ``sub``, the HTTP API,
    dev tokens, ``user:<id>`` and ``dm:<a>:<b>`` channels): 1-100 ASCII letters, digits,
    '_', '.', '@' or '-'.
    """
    if not isinstance(value, str) or _USER_RE.fullmatch(value) is None:
        raise ProtocolError(
            f"{field_name} must be a user id of 1-{MAX_USER_LENGTH} letters, digits, '_', '.', '@' or '-'"
        )
    return value


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


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_bool(message: Mapping[str, Any], name: str) -> bool:
    value = message.get(name, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"{name} must be a boolean")
    return value


def _optional_int(message: Mapping[str, Any], name: str, *, default: int, low: int, high: int) -> int:
    value = message.get(name, default)
    if not _is_int(value) or not low <= value <= high:
        raise ProtocolError(f"{name} must be an integer from {low} to {high}")
    return int(value)


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
