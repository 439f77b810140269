"""The per-connection state machine (pure): synchronous table tests, no sockets, no event loop."""

from __future__ import annotations

import json

import pytest

from tidings.server.channels import Channel
from tidings.server.cluster.backplane import Publication
from tidings.server.gateway.auth import Principal
from tidings.server.gateway.client_commands import (
    Command,
    Connect,
    History,
    Notifications,
    Ping,
    Presence,
    Publish,
    Read,
    Subscribe,
    SubscribeRequest,
    Unsubscribe,
)
from tidings.server.gateway.limits import REJECTIONS_BEFORE_CLOSE, CommandLimiter
from tidings.server.gateway.protocol import (
    CLOSE_PROTOCOL_VIOLATION,
    CLOSE_RATE_LIMITED,
    CLOSE_UNAUTHENTICATED,
    ProtocolError,
    StreamPosition,
)
from tidings.server.gateway.session import (
    ChannelPositions,
    Close,
    Forbidden,
    Join,
    Refuse,
    Run,
    Session,
    State,
)

ALICE = Principal("alice", "alice", 2e9)


def ch(text: str) -> Channel:
    return Channel.parse(text)


def new_session(max_channels: int = 8, **options: object) -> Session:
    return Session("c1", max_channels=max_channels, **options)  # type: ignore[arg-type]


def open_session(user: str = "alice", *, max_channels: int = 8, channels: tuple[str, ...] = ()) -> Session:
    """A session after a successful connect, subscribed to user:<user> like the runner does."""
    session = new_session(max_channels)
    connect = Connect(1, "token")
    assert session.receive(connect) == Run(connect)
    session.open(Principal(user, user, 2e9), connect, now=1.0)
    session.add_channel(Channel.personal(user))
    for channel in channels:
        session.add_channel(ch(channel))
    return session


def refusal(session: Session, command: Command) -> Refuse | Close:
    action = session.receive(command)
    assert isinstance(action, (Refuse, Close)), action
    return action


def passes(session: Session, command: Command) -> None:
    assert session.receive(command) == Run(command)


# --- connect first -----------------------------------------------------------------------------------


def test_a_new_session_waits_for_connect() -> None:
    """A session starts CONNECTING, with no user and no channels."""
    session = new_session()
    assert session.state is State.CONNECTING and session.principal is None and not session.channels


@pytest.mark.parametrize(
    "command",
    [
        Ping(1),
        Subscribe(1, ch("room:a")),
        Unsubscribe(1, ch("room:a")),
        Publish(1, ch("room:a"), {}),
        History(1, ch("room:a")),
        Presence(1, ch("room:a")),
        Notifications(1),
        Read(1, all=True),
    ],
    ids=lambda c: c.op,
)
def test_anything_but_connect_first_closes_with_4500(command: Command) -> None:
    """Every command before connect is a protocol violation (close 4500), not a reply."""
    action = refusal(new_session(), command)
    assert isinstance(action, Close) and action.code == CLOSE_PROTOCOL_VIOLATION
    assert "connect" in action.reason


def test_connect_first_is_allowed_and_open_makes_the_session_the_users() -> None:
    """connect passes the check; open() binds the principal and the session is OPEN."""
    session = new_session()
    connect = Connect(1, "token", (SubscribeRequest(ch("room:a")),))
    passes(session, connect)
    session.open(Principal("alice", "Alice", 2e9), connect, now=5.0)
    assert session.state is State.OPEN and session.user == "alice" and session.opened_at == 5.0


def test_connect_twice_is_a_400_reply() -> None:
    """A second connect is refused with 400 for its id, and the connection goes on."""
    assert refusal(open_session(), Connect(5, "token")) == Refuse(5, 400, "already connected")


def test_open_twice_is_refused() -> None:
    """The driver cannot open a session twice."""
    session = open_session()
    with pytest.raises(ProtocolError):
        session.open(Principal("mallory", "m", 2e9), Connect(1, "t"), now=1.0)
    assert session.user == "alice"


def test_connect_asking_for_more_than_max_channels_is_refused() -> None:
    """The subscriptions of connect plus the personal channel count against max_channels (duplicates once)."""
    session = new_session(max_channels=3)
    passes(
        session,
        Connect(
            1,
            "t",
            (SubscribeRequest(ch("room:a")), SubscribeRequest(ch("room:a")), SubscribeRequest(ch("room:b"))),
        ),
    )
    action = refusal(session, Connect(1, "t", tuple(SubscribeRequest(ch(f"room:{i}")) for i in range(3))))
    # Before connect succeeded any refusal closes: nothing but a valid connect opens a session.
    assert (
        isinstance(action, Close)
        and action.code == CLOSE_PROTOCOL_VIOLATION
        and "3 channels" in action.reason
    )


def test_a_reconnect_listing_its_personal_channel_fits_max_channels() -> None:
    """A reconnecting client lists user:<self> among its channels; it is not counted twice."""
    session = new_session(max_channels=3)
    passes(
        session, Connect(1, "t", tuple(SubscribeRequest(ch(c)) for c in ("user:alice", "room:a", "room:b")))
    )


def test_connect_checks_channel_rules_only_once_the_user_is_known() -> None:
    """Before the token is verified there is no user: forbidden channels in connect are answered per channel later."""
    session = new_session()
    connect = Connect(1, "t", (SubscribeRequest(ch("user:bob")),))
    passes(session, connect)
    plan = session.open(ALICE, connect, now=1.0)
    assert plan == [Join(ch("user:alice")), Forbidden(ch("user:bob"))]


# --- after connect -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        Subscribe(2, ch("room:lobby")),
        Subscribe(2, ch("dm:alice:bob")),
        Subscribe(2, ch("dm:aaron:alice")),
        Subscribe(2, ch("broadcast")),
        Unsubscribe(2, ch("room:lobby")),
        Publish(2, ch("room:lobby"), "hi"),
        Publish(2, ch("dm:alice:bob"), "hi"),
        Publish(2, ch("room:lobby"), "typing", ephemeral=True),
        History(2, ch("room:lobby")),
        History(2, ch("user:alice")),
        History(2, ch("dm:alice:bob")),
        History(2, ch("broadcast")),
        Presence(2, ch("room:lobby")),
        Notifications(2),
        Read(2, ("n1",)),
        Ping(2),
    ],
    ids=lambda c: f"{c.op}-{getattr(c, 'channel', '')}",
)
def test_allowed_commands_pass(command: Command) -> None:
    """What alice may do once connected."""
    passes(open_session("alice"), command)


@pytest.mark.parametrize(
    "command",
    [
        Subscribe(3, ch("user:bob")),
        Subscribe(3, ch("dm:bob:carol")),
        Subscribe(3, ch("dm:bob:alice")),  # ids must be sorted: the unsorted name is nobody's conversation
        Publish(3, ch("user:alice"), "x"),  # only backends publish to a personal channel, even one's own
        Publish(3, ch("user:bob"), "x"),
        Publish(3, ch("broadcast"), "x"),
        Publish(3, ch("dm:bob:carol"), "x"),
        History(3, ch("user:bob")),
        History(3, ch("dm:bob:carol")),
        Presence(3, ch("dm:bob:carol")),
    ],
    ids=lambda c: f"{c.op}-{c.channel}",
)
def test_forbidden_channels_are_403_replies(command: Command) -> None:
    """Channel rules refuse with a 403 reply for the command's id; the connection goes on."""
    action = refusal(open_session("alice"), command)
    assert isinstance(action, Refuse) and (action.code, action.id) == (403, 3)
    assert command.channel.text in action.message  # type: ignore[union-attr]


def test_subscribing_twice_is_a_400() -> None:
    """A second subscribe to the same channel is refused (the first one stays)."""
    session = open_session(channels=("room:a",))
    action = refusal(session, Subscribe(4, ch("room:a")))
    assert isinstance(action, Refuse) and (action.code, action.id) == (400, 4)
    assert action.message == "already subscribed to room:a"


def test_the_personal_channel_is_already_subscribed() -> None:
    """user:<self> is auto-subscribed on connect, so subscribing it again is a 400."""
    action = refusal(open_session("alice"), Subscribe(4, ch("user:alice")))
    assert isinstance(action, Refuse) and action.code == 400


def test_unsubscribing_the_personal_channel_is_refused() -> None:
    """Notifications must keep arriving: unsubscribe user:<self> is a 400."""
    action = refusal(open_session("alice"), Unsubscribe(6, ch("user:alice")))
    assert action == Refuse(6, 400, "the personal channel cannot be unsubscribed")


def test_max_channels_counts_the_personal_channel() -> None:
    """With max_channels 3 and user:alice + room:a, one more fits and the next is a 400."""
    session = open_session("alice", max_channels=3, channels=("room:a",))
    passes(session, Subscribe(7, ch("room:b")))
    session.add_channel(ch("room:b"))
    action = refusal(session, Subscribe(8, ch("room:c")))
    assert action == Refuse(8, 400, "at most 3 channels per connection")


def test_unsubscribe_frees_a_slot() -> None:
    """After remove_channel the channel can be subscribed again and counts no more."""
    session = open_session("alice", max_channels=2, channels=("room:a",))
    session.remove_channel(ch("room:a"))
    passes(session, Subscribe(9, ch("room:a")))


def test_closed_session_refuses_everything_with_4500() -> None:
    """Once closing, nothing more runs."""
    session = open_session()
    session.close()
    assert session.state is State.CLOSED
    for command in (Ping(1), Subscribe(2, ch("room:a")), Connect(3, "t")):
        assert refusal(session, command) == Close(CLOSE_PROTOCOL_VIOLATION, "connection is closing")


# --- frames: decode, rate, refuse or close -----------------------------------------------------------


def frame(message: object) -> str:
    return json.dumps(message)


def test_a_valid_first_frame_runs_connect() -> None:
    """receive_frame decodes with the connection's codec and lets connect run."""
    action = new_session().receive_frame(frame({"id": 1, "op": "connect", "token": "t"}), now=0.0)
    assert action == Run(Connect(1, "t"))


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"id": 1, "op": "connect"}, CLOSE_UNAUTHENTICATED),  # no token: 401 becomes close 4501
        ({"id": 1, "op": "ping"}, CLOSE_PROTOCOL_VIOLATION),
        ({"id": 1, "op": "subscribe", "channel": "nowhere"}, CLOSE_PROTOCOL_VIOLATION),
        ([1, 2], CLOSE_PROTOCOL_VIOLATION),
    ],
)
def test_a_bad_first_frame_closes(message: object, code: int) -> None:
    """Nothing but a valid connect opens a session: a first frame that is not one closes the connection."""
    action = new_session().receive_frame(frame(message), now=0.0)
    assert isinstance(action, Close) and action.code == code


def test_a_bad_frame_after_connect_is_a_400_reply_for_its_id() -> None:
    """After connect, a command that fails validation is an error reply; garbage still closes."""
    session = open_session()
    assert session.receive_frame(frame({"id": 7, "op": "subscribe", "channel": "x"}), now=0.0) == Refuse(
        7, 400, "invalid channel name: expected room:<name>, user:<id>, dm:<a>:<b> or broadcast"
    )
    assert session.receive_frame("not json", now=0.0) == Close(
        CLOSE_PROTOCOL_VIOLATION, "frame is not valid JSON"
    )


def test_a_frame_over_max_size_is_a_413_reply_to_id_0() -> None:
    """Too large to parse: the id cannot be trusted, so the reply goes to id 0."""
    session = new_session(max_size=16)
    connect = Connect(1, "t")
    session.receive(connect)
    session.open(ALICE, connect, now=1.0)
    action = session.receive_frame(frame({"id": 2, "op": "ping", "pad": "x" * 32}), now=0.0)
    assert isinstance(action, Refuse) and (action.id, action.code) == (0, 413)


def test_over_the_rate_a_runnable_command_is_a_temporary_429_then_the_connection_closes_4029() -> None:
    """Every frame counts; over the rate a command is answered 429 (temporary) and after too many, 4029."""
    session = new_session(limiter=CommandLimiter(1.0, 1, now=0.0))
    connect = Connect(1, "t")
    session.receive(connect)
    session.open(ALICE, connect, now=1.0)
    ping = frame({"id": 2, "op": "ping"})
    assert session.receive_frame(ping, now=0.0) == Run(Ping(2))
    assert session.receive_frame(ping, now=0.0) == Refuse(2, 429, "rate limited: slow down", temporary=True)
    for _ in range(REJECTIONS_BEFORE_CLOSE - 1):
        assert isinstance(session.receive_frame(ping, now=0.0), Refuse)
    assert session.receive_frame(ping, now=0.0) == Close(
        CLOSE_RATE_LIMITED, "rate limited: too many commands"
    )


def test_over_the_rate_a_bad_command_gets_its_own_error() -> None:
    """A command that would be refused anyway is answered with its own error, not the 429."""
    session = open_session()
    session.limiter = CommandLimiter(1.0, 1, now=0.0)
    session.receive_frame(frame({"id": 2, "op": "ping"}), now=0.0)
    action = session.receive_frame(
        frame({"id": 3, "op": "publish", "channel": "user:bob", "data": 1}), now=0.0
    )
    assert isinstance(action, Refuse) and action.code == 403


# --- connect: which channels, in which order ---------------------------------------------------------


def test_connect_subscribes_the_personal_channel_first_then_the_rest_each_once() -> None:
    """The plan starts with user:<self>; a channel listed twice keeps the first position given."""
    since = StreamPosition("e", 4)
    connect = Connect(
        1,
        "t",
        (
            SubscribeRequest(ch("room:a")),
            SubscribeRequest(ch("room:a"), since),
            SubscribeRequest(ch("room:a"), StreamPosition("e", 9)),
            SubscribeRequest(ch("dm:alice:bob")),
        ),
    )
    session = new_session()
    passes(session, connect)
    assert session.open(ALICE, connect, now=1.0) == [
        Join(ch("user:alice")),
        Join(ch("room:a"), since),
        Join(ch("dm:alice:bob")),
    ]


def test_a_reconnect_listing_its_personal_channel_recovers_it_in_first_place() -> None:
    """A reconnecting client lists user:<self> with since: that position counts, and it stays first."""
    since = StreamPosition("e", 2)
    connect = Connect(1, "t", (SubscribeRequest(ch("room:a")), SubscribeRequest(ch("user:alice"), since)))
    session = new_session()
    passes(session, connect)
    assert session.open(ALICE, connect, now=1.0) == [Join(ch("user:alice"), since), Join(ch("room:a"))]


def test_forbidden_channels_of_connect_are_answered_in_their_place() -> None:
    """Channels the rules refuse become per-channel 403 results; the connect itself succeeds."""
    connect = Connect(1, "t", (SubscribeRequest(ch("dm:bob:carol")), SubscribeRequest(ch("broadcast"))))
    session = new_session()
    passes(session, connect)
    plan = session.open(ALICE, connect, now=1.0)
    assert plan == [Join(ch("user:alice")), Forbidden(ch("dm:bob:carol")), Join(ch("broadcast"))]
    assert plan[1].result() == {"error": {"code": 403, "message": "subscribe to dm:bob:carol is not allowed"}}  # type: ignore[union-attr]


def test_reset_after_a_failed_connect_waits_for_connect_again() -> None:
    """A connect undone half way leaves a CONNECTING session with no user and no channels."""
    session = open_session(channels=("room:a",))
    session.reset()
    assert session.state is State.CONNECTING and session.principal is None and not session.channels
    assert isinstance(session.receive(Ping(2)), Close)


# --- positions: hold, release, floor -----------------------------------------------------------------


def pub(offset: int | None, epoch: str = "e", channel: str = "room:a") -> Publication:
    return Publication(channel, "" if offset is None else epoch, offset, offset, None, 0)


def admitted(positions: ChannelPositions, *publications: Publication) -> list[int | None]:
    return [p.offset for p in publications if positions.admit(p, f"f{p.offset}")]


def test_positions_start_idle_and_admit_everything() -> None:
    """With nothing held and no floor, every publication is sent as it comes."""
    positions = ChannelPositions()
    assert positions.idle and admitted(positions, pub(1), pub(None), pub(1)) == [1, None, 1]


def test_held_publications_follow_the_reply_without_those_it_carried() -> None:
    """While subscribing nothing is sent; release sends only offsets past the reply's top, in order."""
    positions = ChannelPositions()
    positions.hold("room:a")
    assert admitted(positions, pub(4), pub(None), pub(5), pub(6), pub(1, channel="room:b")) == [1]
    assert positions.release("room:a", after=StreamPosition("e", 5)) == ["fNone", "f6"]


def test_after_release_a_floor_drops_late_repeats_until_a_newer_one_passes() -> None:
    """A node repairing a gap may hand on old offsets after the reply: dropped; the floor then goes away."""
    positions = ChannelPositions()
    positions.hold("room:a")
    positions.release("room:a", after=StreamPosition("e", 5))
    assert not positions.idle
    assert admitted(positions, pub(3), pub(5), pub(6)) == [6]
    assert positions.idle and admitted(positions, pub(5)) == [5]


def test_held_publications_of_a_new_epoch_are_all_sent() -> None:
    """The stream's life changed: offsets of the new epoch are not compared with the old top."""
    positions = ChannelPositions()
    positions.hold("room:a")
    positions.admit(pub(1, epoch="new"), "n1")
    positions.admit(pub(2, epoch="new"), "n2")
    assert positions.release("room:a", after=StreamPosition("old", 10)) == ["n1", "n2"]


def test_a_failed_subscribe_drops_what_was_held_and_sets_no_floor() -> None:
    """release(after=None): nothing is sent and nothing is remembered."""
    positions = ChannelPositions()
    positions.hold("room:a")
    positions.admit(pub(1), "f1")
    assert positions.release("room:a", after=None) == [] and positions.idle
