"""The commands a client sends (wire protocol v1) and :func:`decode_command` (pure).

One frozen dataclass per ``op``. Channels arrive parsed (:class:`~tidings.server.channels.Channel`),
so nothing after decoding slices channel text again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import msgpack

from tidings.server.channels import Channel
from tidings.server.gateway.protocol import (
    CLOSE_PROTOCOL_VIOLATION,
    ERR_TOO_LARGE,
    ERR_UNAUTHENTICATED,
    MAX_HISTORY_LIMIT,
    MAX_ID,
    MAX_NOTIFICATION_ID_LENGTH,
    MAX_READ_IDS,
    Codec,
    ProtocolError,
    StreamPosition,
    check_data,
    is_int,
    is_notification_id,
    is_unicode,
)

__all__ = [
    "Command",
    "Connect",
    "History",
    "Notifications",
    "Ping",
    "Presence",
    "Publish",
    "Read",
    "Subscribe",
    "SubscribeRequest",
    "Unsubscribe",
    "decode_command",
]


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    channel: Channel
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
    channel: Channel
    since: StreamPosition | None = None
    op: Literal["subscribe"] = "subscribe"


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: int
    channel: Channel
    op: Literal["unsubscribe"] = "unsubscribe"


@dataclass(frozen=True, slots=True)
class Publish:
    id: int
    channel: Channel
    data: Any
    ephemeral: bool = False
    op: Literal["publish"] = "publish"


@dataclass(frozen=True, slots=True)
class History:
    id: int
    channel: Channel
    since: StreamPosition | None = None
    limit: int = 100
    reverse: bool = False
    before: int | None = None  # only offsets below it (continues a newest-first read)
    op: Literal["history"] = "history"


@dataclass(frozen=True, slots=True)
class Presence:
    id: int
    channel: Channel
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


Command: TypeAlias = (
    Connect | Subscribe | Unsubscribe | Publish | History | Presence | Notifications | Read | Ping
)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads with any keyword argument builds a new JSONDecoder on every call.
_json_loads_strict = json.JSONDecoder(parse_constant=_reject_constant).decode


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
    if not is_int(command_id) or not 0 < command_id <= MAX_ID:
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
    builder = _BUILDERS.get(op) if isinstance(op, str) else None
    if builder is not None:
        return builder(command_id, message)
    if not isinstance(op, str):
        raise ProtocolError("a command needs an op")
    raise ProtocolError(f"unknown op {op[:32]!r}")


def _connect(command_id: int, message: dict[str, Any]) -> Command:
    token = message.get("token")
    if not isinstance(token, str) or not token:
        raise ProtocolError("connect needs a token", code=ERR_UNAUTHENTICATED)
    return Connect(command_id, token, _subscribe_requests(message.get("subscribe")))


def _subscribe(command_id: int, message: dict[str, Any]) -> Command:
    since = message.get("since")
    return Subscribe(
        command_id,
        Channel.parse(message.get("channel")),
        None if since is None else StreamPosition.parse(since),
    )


def _unsubscribe(command_id: int, message: dict[str, Any]) -> Command:
    return Unsubscribe(command_id, Channel.parse(message.get("channel")))


def _publish(command_id: int, message: dict[str, Any]) -> Command:
    if "data" not in message:
        raise ProtocolError("publish needs data")
    check_data(message["data"])
    return Publish(
        command_id,
        Channel.parse(message.get("channel")),
        message["data"],
        _optional_bool(message, "ephemeral"),
    )


def _history(command_id: int, message: dict[str, Any]) -> Command:
    since = message.get("since")
    return History(
        command_id,
        Channel.parse(message.get("channel")),
        None if since is None else StreamPosition.parse(since),
        _optional_int(message, "limit", default=100, low=1, high=MAX_HISTORY_LIMIT),
        _optional_bool(message, "reverse"),
        _optional_int(message, "before", default=0, low=1, high=MAX_ID) if "before" in message else None,
    )


def _presence(command_id: int, message: dict[str, Any]) -> Command:
    return Presence(command_id, Channel.parse(message.get("channel")))


def _notifications(command_id: int, message: dict[str, Any]) -> Command:
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


def _read(command_id: int, message: dict[str, Any]) -> Command:
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


def _ping(command_id: int, message: dict[str, Any]) -> Command:
    return Ping(command_id)


_BUILDERS = {
    "connect": _connect,
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "publish": _publish,
    "history": _history,
    "presence": _presence,
    "notifications": _notifications,
    "read": _read,
    "ping": _ping,
}


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
                Channel.parse(item.get("channel")), None if since is None else StreamPosition.parse(since)
            )
        )
    return tuple(requests)


def _optional_bool(message: Mapping[str, Any], name: str) -> bool:
    value = message.get(name, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"{name} must be a boolean")
    return value


def _optional_int(message: Mapping[str, Any], name: str, *, default: int, low: int, high: int) -> int:
    value = message.get(name, default)
    if not is_int(value) or not low <= value <= high:
        raise ProtocolError(f"{name} must be an integer from {low} to {high}")
    return int(value)
