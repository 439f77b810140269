"""Channel names and what they mean (pure: no I/O).

A channel is a namespace and a name (DESIGN.md "Concepts"):

  * ``room:<name>`` (or ``room:<name>:<sub>``): any signed-in user; private rooms add a
    membership check (``cluster/rooms.py``).
  * ``user:<id>``: the personal channel of one user. Only that user may subscribe; clients
    never publish to it (backends and the server do: notifications, direct sends).
  * ``dm:<a>:<b>``: the conversation of two users, ids sorted (``a <= b``); only they may use it.
  * ``broadcast``: clients read, only backends publish.
  * ``sys:...``: control messages between nodes (``cluster/control.py``). Clients can never
    name one: :meth:`Channel.parse` refuses the namespace.

Text is parsed once where it enters (a command, an HTTP path) into a frozen :class:`Channel`;
the hub and the backplane keep using the text (``Channel.text``) as their key, so delivery
never parses.

This module also holds the one user-id rule (:func:`check_user`), which every user id follows
wherever it comes from: a token's ``sub``, the HTTP API, dev tokens, and the ids inside
``user:<id>`` and ``dm:<a>:<b>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal, TypeAlias

from tidings.server.gateway.protocol import ProtocolError

__all__ = [
    "BROADCAST",
    "MAX_CHANNEL_LENGTH",
    "MAX_USER_LENGTH",
    "NAMESPACES",
    "SYSTEM_PREFIX",
    "Action",
    "Channel",
    "Namespace",
    "PublicationKind",
    "check_user",
    "is_system",
    "namespace_of",
]

Namespace: TypeAlias = Literal["room", "user", "dm", "broadcast", "sys"]

NAMESPACES: Final[tuple[Namespace, ...]] = ("room", "user", "dm", "broadcast")
"""The namespaces clients may name (``sys`` is the servers' own)."""

PublicationKind: TypeAlias = Literal["publication", "join", "leave", "control", "notification", "unread"]
"""What a publication is, hence which push a subscriber gets (``cluster/backplane/envelope.py``).

``publication``: a ``publication`` push (clients and backends); ``join``/``leave``: presence
events of a room; ``notification``/``unread``: pushes the notifier built whole, on ``user:<id>``;
``control``: a message between nodes on a ``sys:`` channel, never delivered to clients."""

MAX_CHANNEL_LENGTH: Final = 255
MAX_USER_LENGTH: Final = 100
BROADCAST: Final = "broadcast"
SYSTEM_PREFIX: Final = "sys:"

# The one user-id rule (token sub, HTTP paths and bodies, dev tokens, user:<id> and dm:<a>:<b>).
# No ':' -- it separates the two ids of a dm: channel, so "a:b" could never sign in.
_USER: Final = r"[A-Za-z0-9_.@\-]{1,100}"  # {1,MAX_USER_LENGTH}
_USER_RE: Final = re.compile(_USER)
# A channel is a namespace and a name; the name may not contain whitespace or control characters.
_NAME: Final = r"[A-Za-z0-9_.@\-]{1,200}"
_CHANNEL_RE: Final = re.compile(rf"room:{_NAME}(:{_NAME})?|user:{_USER}|dm:{_USER}:{_USER}|broadcast")


class Action(Enum):
    """What a client does with a channel."""

    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"


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


def namespace_of(channel: str) -> str:
    """The namespace of a channel's text ("" for none); cheap, for per-publication code (history policy)."""
    return channel.partition(":")[0]


def is_system(channel: str) -> bool:
    """Whether ``channel`` is a ``sys:`` channel (control messages between nodes)."""
    return channel.startswith(SYSTEM_PREFIX)


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed channel: ``text`` as clients and Redis know it, its namespace and its name.

    ``name`` is what follows ``<namespace>:`` ("" for ``broadcast``). Build one with
    :meth:`parse` (untrusted text), :meth:`room`, :meth:`personal` or :meth:`system`.
    """

    text: str
    namespace: Namespace
    name: str

    def __str__(self) -> str:
        return self.text

    @classmethod
    def parse(cls, value: object) -> Channel:
        """Parse a channel a client (or an HTTP caller) named.

        Raises:
            ProtocolError: 400, for anything but ``room:``, ``user:``, ``dm:`` or ``broadcast``
                names of the allowed characters and length (``sys:`` included).
        """
        if not isinstance(value, str) or not value:
            raise ProtocolError("channel must be a non-empty string")
        if len(value) > MAX_CHANNEL_LENGTH or _CHANNEL_RE.fullmatch(value) is None:
            raise ProtocolError(
                "invalid channel name: expected room:<name>, user:<id>, dm:<a>:<b> or broadcast"
            )
        namespace, _, name = value.partition(":")
        return cls(value, namespace, name)  # type: ignore[arg-type]  # the pattern admits only NAMESPACES

    @classmethod
    def room(cls, name: str) -> Channel:
        """The channel of room ``name``. Raises ProtocolError (400) for a name a room cannot have."""
        return cls.parse(f"room:{name}")

    @classmethod
    def personal(cls, user: str) -> Channel:
        """The personal channel ``user:<id>`` of ``user`` (an id that passed :func:`check_user`)."""
        return cls(f"user:{user}", "user", user)

    @classmethod
    def system(cls, name: str) -> Channel:
        """A ``sys:<name>`` channel: control messages between nodes; no client can name it."""
        return cls(f"{SYSTEM_PREFIX}{name}", "sys", name)

    @property
    def room_name(self) -> str | None:
        """The room of a ``room:`` channel; None for other channels."""
        return self.name if self.namespace == "room" else None

    @property
    def dm_users(self) -> tuple[str, str] | None:
        """The two user ids of a ``dm:<a>:<b>`` channel; None for other channels."""
        if self.namespace != "dm":
            return None
        a, _, b = self.name.partition(":")
        return a, b

    @property
    def is_personal(self) -> bool:
        """Whether this is a ``user:<id>`` channel (of whichever user)."""
        return self.namespace == "user"

    @property
    def tracks_presence(self) -> bool:
        """Presence is kept for rooms, direct conversations and personal channels, not for ``broadcast``."""
        return self.namespace != "broadcast"

    @property
    def announces_presence(self) -> bool:
        """``join``/``leave`` pushes are sent for rooms only."""
        return self.namespace == "room"

    def may(self, user: str, action: Action) -> bool:
        """Whether ``user`` may ``action`` this channel by the namespace rules alone.

        Private rooms need a membership check on top of this (``cluster/rooms.py``).
        """
        if self.namespace == "room":
            return True
        if self.namespace == "user":
            return action is Action.SUBSCRIBE and self.name == user
        if self.namespace == "dm":
            a, _, b = self.name.partition(":")
            return bool(b) and a <= b and user in (a, b)
        if self.namespace == "broadcast":
            return action is Action.SUBSCRIBE
        return False  # sys: never
