"""The per-connection state machine (pure): synchronous table tests, no sockets."""

from __future__ import annotations

import pytest

from tidings.server.gateway.auth import Principal
from tidings.server.gateway.protocol import (
    CLOSE_PROTOCOL_VIOLATION,
    Command,
    Connect,
    History,
    Notifications,
    Ping,
    Presence,
    ProtocolError,
    Publish,
    Read,
    Subscribe,
    SubscribeRequest,
    Unsubscribe,
)
from tidings.server.gateway.session import Session, State


def new_session(max_channels: int = 8) -> Session:
    return Session("c1", max_channels=max_channels)


def open_session(user: str = "alice", *, max_channels: int = 8, channels: tuple[str, ...] = ()) -> Session:
    """A session after a successful connect, subscribed to user:<user> like the runner does."""
    session = new_session(max_channels)
    session.check(Connect(1, "token"))
    session.open(Principal(user, user, 2e9))
    session.add_channel(f"user:{user}")
    for channel in channels:
        session.add_channel(channel)
    return session


def refusal(session: Session, command: Command) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        session.check(command)
    return caught.value


# --- connect first -----------------------------------------------------------------------------------


def test_a_new_session_waits_for_connect() -> None:
    """A session starts CONNECTING, with no user and no channels."""
    session = new_session()
    assert session.state is State.CONNECTING and session.principal is None and not session.channels


@pytest.mark.parametrize(
    "command",
    [
        Ping(1),
        Subscribe(1, "room:a"),
        Unsubscribe(1, "room:a"),
        Publish(1, "room:a", {}),
        History(1, "room:a"),
        Presence(1, "room:a"),
        Notifications(1),
        Read(1, all=True),
    ],
    ids=lambda c: c.op,
)
def test_anything_but_connect_first_closes_with_4500(command: Command) -> None:
    """Every command before connect is a protocol violation (close 4500), not a reply."""
    error = refusal(new_session(), command)
    assert error.close_code == CLOSE_PROTOCOL_VIOLATION
    assert "connect" in error.message


def test_connect_first_is_allowed_and_open_makes_the_session_the_users() -> None:
    """connect passes the check; open() binds the principal and the session is OPEN."""
    session = new_session()
    session.check(Connect(1, "token", (SubscribeRequest("room:a"),)))
    session.open(Principal("alice", "Alice", 2e9))
    assert session.state is State.OPEN and session.user == "alice"


def test_connect_twice_is_a_400_reply() -> None:
    """A second connect is refused with 400 for its id, and the connection goes on."""
    error = refusal(open_session(), Connect(5, "token"))
    assert (error.code, error.close_code, error.id) == (400, None, 5)


def test_open_twice_is_refused() -> None:
    """The driver cannot open a session twice."""
    session = open_session()
    with pytest.raises(ProtocolError):
        session.open(Principal("mallory", "m", 2e9))
    assert session.user == "alice"


def test_connect_asking_for_more_than_max_channels_is_refused() -> None:
    """The subscriptions of connect plus the personal channel count against max_channels (duplicates once)."""
    session = new_session(max_channels=3)
    session.check(
        Connect(1, "t", (SubscribeRequest("room:a"), SubscribeRequest("room:a"), SubscribeRequest("room:b")))
    )
    error = refusal(session, Connect(1, "t", tuple(SubscribeRequest(f"room:{i}") for i in range(3))))
    assert error.code == 400 and "3 channels" in error.message


def test_a_reconnect_listing_its_personal_channel_fits_max_channels() -> None:
    """A reconnecting client lists user:<self> among its channels; it is not counted twice."""
    session = new_session(max_channels=3)
    session.check(Connect(1, "t", tuple(SubscribeRequest(c) for c in ("user:alice", "room:a", "room:b"))))


def test_connect_checks_channel_rules_only_once_the_user_is_known() -> None:
    """Before the token is verified there is no user: forbidden channels in connect are answered per channel later."""
    session = new_session()
    session.check(Connect(1, "t", (SubscribeRequest("user:bob"),)))
    session.open(Principal("alice", "alice", 2e9))
    assert not session.may_subscribe("user:bob") and session.may_subscribe("user:alice")


# --- after connect -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        Subscribe(2, "room:lobby"),
        Subscribe(2, "dm:alice:bob"),
        Subscribe(2, "dm:aaron:alice"),
        Subscribe(2, "broadcast"),
        Unsubscribe(2, "room:lobby"),
        Publish(2, "room:lobby", "hi"),
        Publish(2, "dm:alice:bob", "hi"),
        Publish(2, "room:lobby", "typing", ephemeral=True),
        History(2, "room:lobby"),
        History(2, "user:alice"),
        History(2, "dm:alice:bob"),
        History(2, "broadcast"),
        Presence(2, "room:lobby"),
        Notifications(2),
        Read(2, ("n1",)),
        Ping(2),
    ],
    ids=lambda c: f"{c.op}-{getattr(c, 'channel', '')}",
)
def test_allowed_commands_pass(command: Command) -> None:
    """What alice may do once connected."""
    open_session("alice").check(command)


@pytest.mark.parametrize(
    "command",
    [
        Subscribe(3, "user:bob"),
        Subscribe(3, "dm:bob:carol"),
        Subscribe(3, "dm:bob:alice"),  # ids must be sorted: the unsorted name is nobody's conversation
        Publish(3, "user:alice", "x"),  # only backends publish to a personal channel, even one's own
        Publish(3, "user:bob", "x"),
        Publish(3, "broadcast", "x"),
        Publish(3, "dm:bob:carol", "x"),
        History(3, "user:bob"),
        History(3, "dm:bob:carol"),
        Presence(3, "dm:bob:carol"),
    ],
    ids=lambda c: f"{c.op}-{c.channel}",
)
def test_forbidden_channels_are_403_replies(command: Command) -> None:
    """Channel rules refuse with a 403 reply for the command's id; the connection goes on."""
    error = refusal(open_session("alice"), command)
    assert (error.code, error.close_code, error.id) == (403, None, 3)
    assert command.channel in error.message  # type: ignore[union-attr]


def test_subscribing_twice_is_a_400() -> None:
    """A second subscribe to the same channel is refused (the first one stays)."""
    session = open_session(channels=("room:a",))
    error = refusal(session, Subscribe(4, "room:a"))
    assert (error.code, error.id) == (400, 4) and "already subscribed" in error.message


def test_the_personal_channel_is_already_subscribed() -> None:
    """user:<self> is auto-subscribed on connect, so subscribing it again is a 400."""
    error = refusal(open_session("alice"), Subscribe(4, "user:alice"))
    assert error.code == 400


def test_unsubscribing_the_personal_channel_is_refused() -> None:
    """Notifications must keep arriving: unsubscribe user:<self> is a 400."""
    error = refusal(open_session("alice"), Unsubscribe(6, "user:alice"))
    assert (error.code, error.close_code, error.id) == (400, None, 6)


def test_max_channels_counts_the_personal_channel() -> None:
    """With max_channels 3 and user:alice + room:a, one more fits and the next is a 400."""
    session = open_session("alice", max_channels=3, channels=("room:a",))
    session.check(Subscribe(7, "room:b"))
    session.add_channel("room:b")
    error = refusal(session, Subscribe(8, "room:c"))
    assert (error.code, error.id) == (400, 8) and "at most 3" in error.message


def test_unsubscribe_frees_a_slot() -> None:
    """After remove_channel the channel can be subscribed again and counts no more."""
    session = open_session("alice", max_channels=2, channels=("room:a",))
    session.remove_channel("room:a")
    session.check(Subscribe(9, "room:a"))


def test_closed_session_refuses_everything_with_4500() -> None:
    """Once closing, nothing more runs."""
    session = open_session()
    session.close()
    assert session.state is State.CLOSED
    for command in (Ping(1), Subscribe(2, "room:a"), Connect(3, "t")):
        assert refusal(session, command).close_code == CLOSE_PROTOCOL_VIOLATION
