"""The per-connection state machine (pure): what a client may do, and when.

CONNECTING → OPEN → CLOSED. The first command must be ``connect``; after it,
every command is checked against the connection's state and the channel rules
before the connection driver runs it. All outcomes are synchronous, so every
edge case is a plain unit test (``tests/test_session.py``).
"""

from __future__ import annotations

from enum import Enum

from tidings.server.gateway.auth import Action, Principal, may
from tidings.server.gateway.protocol import (
    CLOSE_PROTOCOL_VIOLATION,
    ERR_BAD_REQUEST,
    ERR_FORBIDDEN,
    Command,
    Connect,
    History,
    Presence,
    ProtocolError,
    Publish,
    Subscribe,
    Unsubscribe,
)

__all__ = ["Session", "State"]


class State(Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


class Session:
    """What one connection is allowed to do next.

    ``check`` raises :class:`ProtocolError` for commands that are out of order or
    not permitted; the driver calls ``open``, ``add_channel`` and
    ``remove_channel`` once it has carried a command out.
    """

    __slots__ = ("channels", "client_id", "max_channels", "opened_at", "principal", "state")

    def __init__(self, client_id: str, *, max_channels: int) -> None:
        self.client_id = client_id
        self.max_channels = max_channels
        self.state = State.CONNECTING
        self.principal: Principal | None = None
        self.channels: set[str] = set()
        self.opened_at = 0.0  # wall-clock seconds of the successful connect (set by the driver)

    @property
    def user(self) -> str:
        assert self.principal is not None, "user is known only once the session is open"
        return self.principal.user

    def check(self, command: Command) -> None:
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
            wanted = {request.channel for request in command.subscribe}
            if not any(channel.startswith("user:") for channel in wanted):
                # The personal channel is subscribed on connect too; a reconnecting client lists it itself.
                wanted.add("user:")
            self._check_subscriptions(wanted)
            return
        if isinstance(command, Connect):
            raise ProtocolError("already connected", code=ERR_BAD_REQUEST, id=command.id)
        if isinstance(command, Subscribe):
            if command.channel in self.channels:
                raise ProtocolError(f"already subscribed to {command.channel}", id=command.id)
            self._check_subscriptions([command.channel], command_id=command.id)
        elif isinstance(command, Publish):
            self._require(Action.PUBLISH, command.channel, command.id)
        elif isinstance(command, Presence) and command.channel.startswith("user:"):
            pass  # whether a user is online is visible to every signed-in user (contact lists)
        elif isinstance(command, (History, Presence)):
            self._require(Action.SUBSCRIBE, command.channel, command.id)
        elif isinstance(command, Unsubscribe) and command.channel.startswith("user:"):
            raise ProtocolError("the personal channel cannot be unsubscribed", id=command.id)

    def _check_subscriptions(self, channels: object, command_id: int | None = None) -> None:
        wanted = list(channels)  # type: ignore[call-overload]
        if len(self.channels) + len(set(wanted)) > self.max_channels:
            raise ProtocolError(f"at most {self.max_channels} channels per connection", id=command_id)
        if self.principal is not None:
            for channel in wanted:
                self._require(Action.SUBSCRIBE, channel, command_id)

    def _require(self, action: Action, channel: str, command_id: int | None) -> None:
        if not may(self.user, action, channel):
            raise ProtocolError(
                f"{action.value} to {channel} is not allowed", code=ERR_FORBIDDEN, id=command_id
            )

    def open(self, principal: Principal) -> None:
        """``connect`` succeeded: the session belongs to ``principal`` from now on."""
        if self.state is not State.CONNECTING:
            raise ProtocolError("already connected")
        self.principal = principal
        self.state = State.OPEN

    def reset(self) -> None:
        """A ``connect`` failed half way (and was undone): the next command must be ``connect`` again."""
        if self.state is State.OPEN:
            self.state = State.CONNECTING
        self.principal = None
        self.channels.clear()

    def may_subscribe(self, channel: str) -> bool:
        """Namespace rule for the subscriptions asked for in ``connect`` (checked once the user is known)."""
        return may(self.user, Action.SUBSCRIBE, channel)

    def add_channel(self, channel: str) -> None:
        self.channels.add(channel)

    def remove_channel(self, channel: str) -> None:
        self.channels.discard(channel)

    def close(self) -> None:
        self.state = State.CLOSED
