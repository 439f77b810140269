"""Channel names (pure): parsing, the namespace predicates, and the kind of a publication."""

from __future__ import annotations

import pytest

from tidings.server.channels import Action, Channel, namespace_of
from tidings.server.cluster.backplane import Sender, kind_of
from tidings.server.cluster.backplane.envelope import decode_publication, encode_payload
from tidings.server.gateway.protocol import ProtocolError


@pytest.mark.parametrize(
    ("text", "namespace", "name", "room", "dm"),
    [
        ("room:lobby", "room", "lobby", "lobby", None),
        ("room:a:b", "room", "a:b", "a:b", None),
        ("user:alice", "user", "alice", None, None),
        ("dm:alice:bob", "dm", "alice:bob", None, ("alice", "bob")),
        ("broadcast", "broadcast", "", None, None),
    ],
)
def test_parse_splits_namespace_and_name(
    text: str, namespace: str, name: str, room: str | None, dm: tuple[str, str] | None
) -> None:
    """Channel.parse keeps the text and splits it once: namespace, name, room, the two ids of a dm."""
    channel = Channel.parse(text)
    assert (channel.text, str(channel), channel.namespace, channel.name) == (text, text, namespace, name)
    assert (channel.room_name, channel.dm_users) == (room, dm)


@pytest.mark.parametrize("text", ["sys:control", "sys:node:n1", "system", "room:", "user:a:b"])
def test_parse_refuses_what_clients_may_not_name(text: str) -> None:
    """sys: channels and malformed names are 400s with today's message."""
    with pytest.raises(ProtocolError) as caught:
        Channel.parse(text)
    assert caught.value.code == 400 and caught.value.message.startswith("invalid channel name")


def test_constructors_build_the_same_channels_parse_does() -> None:
    """personal() and room() agree with parse(); system() builds what parse() refuses."""
    assert Channel.personal("alice") == Channel.parse("user:alice")
    assert Channel.room("lobby") == Channel.parse("room:lobby")
    assert Channel.system("control").text == "sys:control"
    with pytest.raises(ProtocolError):
        Channel.room("a b")


@pytest.mark.parametrize(
    ("text", "tracks", "announces", "personal"),
    [
        ("room:a", True, True, False),
        ("dm:a:b", True, False, False),
        ("user:a", True, False, True),
        ("broadcast", False, False, False),
    ],
)
def test_presence_predicates(text: str, tracks: bool, announces: bool, personal: bool) -> None:
    """Presence for all but broadcast; join/leave pushes for rooms only."""
    channel = Channel.parse(text)
    assert (channel.tracks_presence, channel.announces_presence, channel.is_personal) == (
        tracks,
        announces,
        personal,
    )


def test_system_channels_allow_clients_nothing() -> None:
    """Even were a sys: channel to reach the rules, no user may subscribe or publish."""
    channel = Channel.system("control")
    assert not channel.may("alice", Action.SUBSCRIBE) and not channel.may("alice", Action.PUBLISH)


def test_namespace_of_reads_the_text_without_parsing() -> None:
    """The per-publication helper (history policy) agrees with parse."""
    for text in ("room:a:b", "user:x", "dm:a:b", "broadcast"):
        assert namespace_of(text) == Channel.parse(text).namespace
    assert namespace_of("sys:control") == "sys"


SENDER = Sender("alice", "c1")
MEMBER = {"user": "bob", "client": "c2", "node": "n", "info": {}}


@pytest.mark.parametrize(
    ("channel", "offset", "sender", "data", "kind"),
    [
        ("room:a", 1, SENDER, {"push": "join"}, "publication"),  # a client's data is never an event
        ("room:a", None, SENDER, {"push": "join"}, "publication"),
        ("room:a", 3, None, {"push": "join"}, "publication"),  # a backend publication with history
        ("room:a", None, None, {"push": "join", "member": MEMBER}, "join"),
        ("room:a", None, None, {"push": "leave", "member": MEMBER}, "leave"),
        ("room:a", None, None, {"push": "other"}, "publication"),
        ("room:a", None, None, "text", "publication"),
        ("user:a", None, None, {"push": "notification", "notification": {}, "unread": 1}, "notification"),
        ("user:a", None, None, {"push": "unread", "unread": 0}, "unread"),
        ("room:a", None, None, {"push": "unread", "unread": 0}, "publication"),  # only on personal channels
        ("sys:control", 5, None, {"op": "kick"}, "control"),
        ("sys:node:n1", None, None, {"op": "disconnect_client"}, "control"),
    ],
)
def test_kind_of_a_publication(
    channel: str, offset: int | None, sender: Sender | None, data: object, kind: str
) -> None:
    """The kind follows from what every node reads (channel, position, sender, data), as hub._event_push guessed."""
    assert kind_of(channel, offset, sender, data) == kind


@pytest.mark.parametrize(
    ("channel", "data", "kind"),
    [
        ("room:a", {"push": "join", "member": MEMBER}, "join"),
        ("user:a", {"push": "unread", "unread": 2}, "unread"),
        ("sys:control", {"op": "invalidate_room", "room": "a"}, "control"),
        ("room:a", [1, 2], "publication"),
    ],
)
def test_the_redis_payload_is_unchanged_and_decodes_to_the_same_kind(
    channel: str, data: object, kind: str
) -> None:
    """The payload stays [data, user, client, ts] (previous nodes read it); decoding derives the kind."""
    payload = encode_payload(data, None, 7)
    assert payload == bytes.fromhex("94") + payload[1:]  # a 4-element MessagePack array, as before
    publication = decode_publication(channel, "", None, payload)
    assert (publication.data, publication.kind) == (data, kind)
