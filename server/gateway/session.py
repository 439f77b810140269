"""The per-connection state machine (pure): what a client may do, and when.

Like websockets' ``Protocol.receive_data()``: the driver (``connection.py`` and
``commands.py``) hands each frame to :meth:`Session.receive_frame` and carries out
the one action it returns; it does every await, the session none.

CONNECTING → OPEN → CLOSED. The first command must be ``connect``; after it, every
command is checked against the connection's state and the channel rules. Once a
token is verified, :meth:`Session.open` says which channels the connect subscribes
(the personal one first) and which it refuses. :class:`ChannelPositions` holds the
ordering rule of (re)subscribes: hold live publications, release them after the
reply, never send one twice. All outcomes are synchronous, so every edge case is a
plain unit test (``tests/test_session.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeAlias

from tidings.server.channels import Action, Channel
from tidings.server.cluster.backplane import Publication
from tidings.server.gateway.auth import Principal
from tidings.server.gateway.client_commands import (
    Command,
    Connect,
    History,
    Presence,
    Publish,
    Subscribe,
    Unsubscribe,
    decode_command,
)
from tidings.server.gateway.limits import CommandLimiter, Verdict
from tidings.server.gateway.protocol import (
    CLOSE_PROTOCOL_VIOLATION,
    CLOSE_RATE_LIMITED,
    CLOSE_UNAUTHENTICATED,
    ERR_BAD_REQUEST,
    ERR_FORBIDDEN,
    ERR_RATE_LIMITED,
    ERR_UNAUTHENTICATED,
    Codec,
    Frame,
    ProtocolError,
    StreamPosition,
    error_reply,
)

__all__ = [
    "ChannelPositions",
    "Close",
    "ConnectChannel",
    "Forbidden",
    "FrameAction",
    "Join",
    "Refuse",
    "Run",
    "Session",
    "State",
]


class State(Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


# --- actions: what the driver does next --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """Carry out ``command`` (it passed every rule the session knows) and reply to it."""

    command: Command


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer with an error reply for ``id`` and run nothing; the connection goes on."""

    id: int
    code: int
    message: str
    temporary: bool = False

    def reply(self) -> dict[str, Any]:
        return error_reply(self.id, self.code, self.message, temporary=self.temporary)


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with ``code`` (a ``disconnect`` push, then the close frame)."""

    code: int
    reason: str


FrameAction: TypeAlias = Run | Refuse | Close
"""The one thing the driver does with a frame."""


@dataclass(frozen=True, slots=True)
class Join:
    """Subscribe ``channel``, from ``since`` if given (recovery), and answer with its position."""

    channel: Channel
    since: StreamPosition | None = None


@dataclass(frozen=True, slots=True)
class Forbidden:
    """A channel of ``connect`` the namespace rules refuse: answered in its place, the connect goes on."""

    channel: Channel

    def result(self) -> dict[str, Any]:
        message = f"{Action.SUBSCRIBE.value} to {self.channel} is not allowed"
        return {"error": {"code": ERR_FORBIDDEN, "message": message}}


ConnectChannel: TypeAlias = Join | Forbidden


# --- the session -------------------------------------------------------------------------------------


class Session:
    """What one connection is allowed to do next.

    ``receive_frame`` (or ``receive``, for a decoded command) returns the action; the
    driver reports back what it carried out: ``open`` after a verified token,
    ``add_channel``/``remove_channel`` after a (un)subscribe, ``reset`` after a failed
    connect, ``close`` when the connection closes.
    """

    __slots__ = (
        "channels",
        "client_id",
        "codec",
        "limiter",
        "max_channels",
        "max_size",
        "opened_at",
        "principal",
        "state",
    )

    def __init__(
        self,
        client_id: str,
        *,
        max_channels: int,
        codec: Codec = Codec.JSON,
        max_size: int = 65536,
        limiter: CommandLimiter | None = None,
    ) -> None:
        self.client_id = client_id
        self.max_channels = max_channels
        self.codec = codec
        self.max_size = max_size
        self.limiter = limiter  # None: no command rate limit
        self.state = State.CONNECTING
        self.principal: Principal | None = None
        self.channels: dict[str, Channel] = {}  # channel text → channel, as subscribed
        self.opened_at = 0.0  # wall-clock seconds of the successful connect

    @property
    def user(self) -> str:
        assert self.principal is not None, "user is known only once the session is open"
        return self.principal.user

    def receive_frame(self, frame: Frame, *, now: float) -> FrameAction:
        """What to do with one frame that arrived at ``now`` (monotonic seconds).

        Every frame counts against the rate, valid or not: 429 while over it, close 4029 if
        that goes on. A frame that is not a command closes the connection (4500), as does a
        bad first command (4501 for a missing token): nothing but a valid connect opens a session.
        """
        verdict = self.limiter.check(now) if self.limiter is not None else Verdict.ALLOW
        if verdict is Verdict.CLOSE:
            return Close(CLOSE_RATE_LIMITED, "rate limited: too many commands")
        try:
            command = decode_command(frame, self.codec, max_size=self.max_size)
        except ProtocolError as exc:
            return self._refusal(exc)
        action = self.receive(command)
        if verdict is Verdict.REJECT and isinstance(action, Run):
            return Refuse(command.id, ERR_RATE_LIMITED, "rate limited: slow down", temporary=True)
        return action

    def receive(self, command: Command) -> FrameAction:
        """What to do with one decoded command: run it, refuse it, or close."""
        try:
            self._check(command)
        except ProtocolError as exc:
            return self._refusal(exc)
        return Run(command)

    def _refusal(self, exc: ProtocolError) -> Refuse | Close:
        close_code = exc.close_code
        if close_code is None and self.state is State.CONNECTING:
            close_code = (
                CLOSE_UNAUTHENTICATED if exc.code == ERR_UNAUTHENTICATED else CLOSE_PROTOCOL_VIOLATION
            )
        if close_code is not None:
            return Close(close_code, exc.message)
        return Refuse(exc.id or 0, exc.code, exc.message)

    def _check(self, command: Command) -> None:
        """Raise ProtocolError unless ``command`` may run now.

        Raises:
            ProtocolError: close 4500 for anything but ``connect`` first; 400 for a
                second ``connect``, a duplicate subscription or too many channels;
                403 for a channel the user may not use.
        """
        if self.state is State.CLOSED:
            raise ProtocolError("connection is closing", close_code=CLOSE_PROTOCOL_VIOLATION)
        if self.state is State.CONNECTING:
            if not isinstance(command, Connect):
                raise ProtocolError(
                    f"expected connect as the first command, got {command.op}",
                    close_code=CLOSE_PROTOCOL_VIOLATION,
                )
            wanted = {request.channel.text for request in command.subscribe}
            # The personal channel is subscribed on connect too; a reconnecting client lists it itself.
            personal = any(request.channel.is_personal for request in command.subscribe)
            self._check_count(len(wanted) + (0 if personal else 1), None)
            return
        if isinstance(command, Connect):
            raise ProtocolError("already connected", code=ERR_BAD_REQUEST, id=command.id)
        if isinstance(command, Subscribe):
            if command.channel.text in self.channels:
                raise ProtocolError(f"already subscribed to {command.channel}", id=command.id)
            self._check_count(1, command.id)
            self._require(Action.SUBSCRIBE, command.channel, command.id)
        elif isinstance(command, Publish):
            self._require(Action.PUBLISH, command.channel, command.id)
        elif isinstance(command, Presence) and command.channel.is_personal:
            pass  # whether a user is online is visible to every signed-in user (contact lists)
        elif isinstance(command, (History, Presence)):
            self._require(Action.SUBSCRIBE, command.channel, command.id)
        elif isinstance(command, Unsubscribe) and command.channel.is_personal:
            raise ProtocolError("the personal channel cannot be unsubscribed", id=command.id)

    def _check_count(self, more: int, command_id: int | None) -> None:
        if len(self.channels) + more > self.max_channels:
            raise ProtocolError(f"at most {self.max_channels} channels per connection", id=command_id)

    def _require(self, action: Action, channel: Channel, command_id: int | None) -> None:
        if not channel.may(self.user, action):
            raise ProtocolError(
                f"{action.value} to {channel} is not allowed", code=ERR_FORBIDDEN, id=command_id
            )

    def open(self, principal: Principal, command: Connect, *, now: float) -> list[ConnectChannel]:
        """``connect`` was verified: the session belongs to ``principal`` from now (``now``: wall clock).

        Returns:
            The channels to subscribe, the personal channel first, each once (a reconnecting
            client lists its personal channel with ``since``: that position counts), and in
            their place those the namespace rules refuse.
        """
        if self.state is not State.CONNECTING:
            raise ProtocolError("already connected")
        self.principal = principal
        self.state = State.OPEN
        self.opened_at = now
        personal = Channel.personal(principal.user)
        wanted: dict[str, Join] = {personal.text: Join(personal)}
        for request in command.subscribe:
            joined = wanted.get(request.channel.text)
            if joined is None or joined.since is None:
                wanted[request.channel.text] = Join(request.channel, request.since)
        return [
            join if join.channel.may(principal.user, Action.SUBSCRIBE) else Forbidden(join.channel)
            for join in wanted.values()
        ]

    def reset(self) -> None:
        """A ``connect`` failed half way (and was undone): the next command must be ``connect`` again."""
        if self.state is State.OPEN:
            self.state = State.CONNECTING
        self.principal = None
        self.channels.clear()

    def add_channel(self, channel: Channel) -> None:
        self.channels[channel.text] = channel

    def remove_channel(self, channel: Channel) -> None:
        self.channels.pop(channel.text, None)

    def close(self) -> None:
        self.state = State.CLOSED


# --- positions: hold, release, floor -----------------------------------------------------------------


class ChannelPositions:
    """Per channel, what of the live stream a connection has sent, around (re)subscribes.

    While a channel is being (re)subscribed its live publications are held; once the reply
    is queued, ``release`` hands back those the reply did not already carry (DESIGN.md,
    Guarantee 2: no gap, no duplicate). Afterwards a *floor* remembers the highest offset
    sent, because a node repairing a pub/sub gap may still hand on older publications;
    those are dropped. The floor goes away with the first newer publication, and an empty
    structure reports :attr:`idle`, so the connection can drop it: steady state costs one
    ``None`` check per delivery.
    """

    __slots__ = ("_floor", "_held")

    def __init__(self) -> None:
        self._held: dict[str, list[tuple[Publication, Frame]]] = {}
        self._floor: dict[str, tuple[str, int]] = {}

    @property
    def idle(self) -> bool:
        """Nothing held and no floor: every publication may be sent as it comes."""
        return not self._held and not self._floor

    def hold(self, channel: str) -> None:
        """Hold back live publications of ``channel`` until ``release``."""
        self._held[channel] = []

    def admit(self, publication: Publication, frame: Frame) -> bool:
        """Whether to send ``publication`` now: False when it is held, or was already sent."""
        held = self._held.get(publication.channel)
        if held is not None:
            held.append((publication, frame))
            return False
        floor = self._floor.get(publication.channel)
        if floor is None or publication.offset is None:
            return True
        if publication.epoch == floor[0] and publication.offset <= floor[1]:
            return False  # already sent (in a subscribe reply or released after it)
        del self._floor[publication.channel]
        return True

    def release(self, channel: str, *, after: StreamPosition | None) -> list[Frame]:
        """The frames held for ``channel`` to send now, without offsets up to ``after`` (the reply had them).

        ``after`` None drops what was held (the subscription failed) and sets no floor.
        """
        held = self._held.pop(channel, [])
        if after is None:
            return []
        floor = after.offset
        frames: list[Frame] = []
        for publication, frame in held:
            if publication.offset is None:
                frames.append(frame)
            elif publication.epoch != after.epoch or publication.offset > floor:
                floor = max(floor, publication.offset) if publication.epoch == after.epoch else floor
                frames.append(frame)
        self._floor[channel] = (after.epoch, floor)
        return frames
