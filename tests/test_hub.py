"""The hub over the in-memory backplane, with fake subscribers that record what they are handed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import pytest

from tidings.server.cluster.backplane import BackplaneUnavailable, Publication, Sender
from tidings.server.cluster.backplane.memory import InMemoryBackplane
from tidings.server.gateway.hub import Hub
from tidings.server.gateway.protocol import Codec, Frame

from .support.timing import UNIT, wait_until


class FakeSubscriber:
    """Records every (publication, frame) the hub hands it; never awaits, like a real Connection."""

    def __init__(self, client_id: str, codec: Codec = Codec.JSON) -> None:
        self.client_id = client_id
        self.codec = codec
        self.received: list[tuple[Publication, Frame]] = []

    def deliver(self, publication: Publication, frame: Frame) -> None:
        self.received.append((publication, frame))

    def messages(self) -> list[dict[str, Any]]:
        return [self.codec.split(frame)[0] for _, frame in self.received]


class RecordingBackplane(InMemoryBackplane):
    """The memory backplane, logging (un)subscribe calls; ``gate`` makes subscribe wait, ``fail`` makes it fail."""

    def __init__(self) -> None:
        super().__init__(node_id="test")
        self.calls: list[tuple[str, str]] = []
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def subscribe(self, channel: str) -> None:
        self.calls.append(("subscribe", channel))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise BackplaneUnavailable("down")
        await super().subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.calls.append(("unsubscribe", channel))
        await asyncio.sleep(0)  # a real backplane awaits here: let other tasks interleave
        await super().unsubscribe(channel)


@pytest.fixture
async def backplane() -> RecordingBackplane:
    return RecordingBackplane()


@pytest.fixture
async def hub(backplane: RecordingBackplane) -> Hub:
    hub = Hub(backplane)
    await backplane.start(hub.deliver)
    return hub


async def test_backplane_is_subscribed_once_for_the_first_and_unsubscribed_after_the_last(
    hub: Hub, backplane: RecordingBackplane
) -> None:
    """Refcounting: three local subscribers cost one backplane subscription."""
    subscribers = [FakeSubscriber(f"c{i}") for i in range(3)]
    for subscriber in subscribers:
        await hub.subscribe("room:a", subscriber)
    assert backplane.calls == [("subscribe", "room:a")]
    assert set(hub.subscribers("room:a")) == set(subscribers) and hub.channel_count == 1
    for subscriber in subscribers:
        await hub.unsubscribe("room:a", subscriber)
    assert backplane.calls == [("subscribe", "room:a"), ("unsubscribe", "room:a")]
    assert hub.channel_count == 0 and list(hub.subscribers("room:a")) == []


async def test_unsubscribing_a_stranger_changes_nothing(hub: Hub, backplane: RecordingBackplane) -> None:
    """Unsubscribing someone who is not subscribed (or an unknown channel) is a no-op."""
    member, stranger = FakeSubscriber("m"), FakeSubscriber("s")
    await hub.subscribe("room:a", member)
    await hub.unsubscribe("room:a", stranger)
    await hub.unsubscribe("room:nowhere", stranger)
    assert list(hub.subscribers("room:a")) == [member]
    assert ("unsubscribe", "room:a") not in backplane.calls


async def test_publications_reach_every_local_subscriber_in_offset_order(
    hub: Hub, backplane: RecordingBackplane
) -> None:
    """Each subscriber of the channel gets each publication once, in order; others get nothing."""
    a, b, other = FakeSubscriber("a"), FakeSubscriber("b", Codec.MSGPACK), FakeSubscriber("o")
    await hub.subscribe("room:x", a)
    await hub.subscribe("room:x", b)
    await hub.subscribe("room:y", other)
    for i in range(5):
        await backplane.publish("room:x", {"n": i}, sender=Sender("u", "c1"))
    for subscriber in (a, b):
        messages = subscriber.messages()
        assert [m["offset"] for m in messages] == [1, 2, 3, 4, 5]
        assert [m["data"] for m in messages] == [{"n": i} for i in range(5)]
        assert messages[0]["from"] == {"user": "u", "client": "c1"} and messages[0]["push"] == "publication"
    assert other.received == []
    assert hub.deliveries == 10


async def test_a_publication_is_encoded_once_per_codec(hub: Hub, backplane: RecordingBackplane) -> None:
    """Subscribers sharing a codec get the very same frame object: one encode per node, not per client."""
    json_subscribers = [FakeSubscriber(f"j{i}") for i in range(3)]
    msgpack_subscribers = [FakeSubscriber(f"m{i}", Codec.MSGPACK) for i in range(3)]
    for subscriber in json_subscribers + msgpack_subscribers:
        await hub.subscribe("room:x", subscriber)
    await backplane.publish("room:x", "hello")
    json_frames = {id(s.received[0][1]) for s in json_subscribers}
    msgpack_frames = {id(s.received[0][1]) for s in msgpack_subscribers}
    assert len(json_frames) == 1 and len(msgpack_frames) == 1
    json_frame, msgpack_frame = json_subscribers[0].received[0][1], msgpack_subscribers[0].received[0][1]
    assert isinstance(json_frame, str) and isinstance(msgpack_frame, bytes)
    assert json.loads(json_frame) == msgpack.unpackb(msgpack_frame, raw=False)


async def test_ephemeral_and_backend_publications(hub: Hub, backplane: RecordingBackplane) -> None:
    """An ephemeral publication has no epoch/offset; a backend publication (no sender) has no from."""
    subscriber = FakeSubscriber("a")
    await hub.subscribe("room:x", subscriber)
    await backplane.publish("room:x", "typing", sender=Sender("u", "c"), ephemeral=True)
    await backplane.publish("room:x", "from the backend")
    typing, backend = subscriber.messages()
    assert "offset" not in typing and "epoch" not in typing and typing["data"] == "typing"
    assert "from" not in backend and backend["offset"] == 1


async def test_unsubscribed_channels_are_not_delivered(hub: Hub, backplane: RecordingBackplane) -> None:
    """After the last local subscriber leaves, publications of the channel reach nobody here."""
    subscriber = FakeSubscriber("a")
    await hub.subscribe("room:x", subscriber)
    await hub.unsubscribe("room:x", subscriber)
    await backplane.publish("room:x", 1)
    hub.deliver(Publication("room:x", "e", 9, 1, None, 0))  # even if a late one arrives
    assert subscriber.received == []


async def test_concurrent_join_and_leave_never_lose_the_backplane_subscription(
    hub: Hub, backplane: RecordingBackplane
) -> None:
    """broadcaster's check-await-act race: a join that arrives while the last leave is unsubscribing still ends subscribed."""
    first, second = FakeSubscriber("1"), FakeSubscriber("2")
    await hub.subscribe("room:x", first)
    async with asyncio.timeout(5 * UNIT):
        await asyncio.gather(hub.unsubscribe("room:x", first), hub.subscribe("room:x", second))
    assert list(hub.subscribers("room:x")) == [second]
    await backplane.publish("room:x", "still here")
    assert [m["data"] for m in second.messages()] == ["still here"]
    assert backplane.calls == [("subscribe", "room:x"), ("unsubscribe", "room:x"), ("subscribe", "room:x")]


async def test_concurrent_first_joins_subscribe_the_backplane_once(
    hub: Hub, backplane: RecordingBackplane
) -> None:
    """Two joins racing while the backplane subscribe is in flight cause one backplane subscribe."""
    backplane.gate = asyncio.Event()
    subscribers = [FakeSubscriber(str(i)) for i in range(4)]
    joins = asyncio.gather(*(hub.subscribe("room:x", s) for s in subscribers))
    await asyncio.sleep(0)
    backplane.gate.set()
    async with asyncio.timeout(5 * UNIT):
        await joins
    assert backplane.calls == [("subscribe", "room:x")]
    assert set(hub.subscribers("room:x")) == set(subscribers)


async def test_failed_backplane_subscribe_registers_nothing_and_can_be_retried(
    hub: Hub, backplane: RecordingBackplane
) -> None:
    """A BackplaneUnavailable from subscribe leaves no half-registered subscriber; the next try works."""
    subscriber = FakeSubscriber("a")
    backplane.fail = True
    with pytest.raises(BackplaneUnavailable):
        await hub.subscribe("room:x", subscriber)
    assert list(hub.subscribers("room:x")) == [] and hub.channel_count == 0
    backplane.fail = False
    await hub.subscribe("room:x", subscriber)
    assert list(hub.subscribers("room:x")) == [subscriber]


async def test_registry_of_connections(hub: Hub) -> None:
    """register/unregister keep client id → connection; unregistering twice is harmless."""
    subscriber = FakeSubscriber("c42")
    hub.register(subscriber)
    assert hub.connections == {"c42": subscriber}
    hub.unregister(subscriber)
    hub.unregister(subscriber)
    assert hub.connections == {}


async def test_a_subscriber_leaving_during_fan_out_does_not_break_it(
    hub: Hub, backplane: RecordingBackplane
) -> None:
    """Fan-out iterates a snapshot: a subscriber removed by another's delivery still gets this one, nobody crashes."""
    survivors = [FakeSubscriber(f"s{i}") for i in range(3)]

    class Overflowing(FakeSubscriber):
        def deliver(self, publication: Publication, frame: Frame) -> None:
            super().deliver(publication, frame)
            # What a full outbox does: the connection goes away (its cleanup task runs later).
            asyncio.get_running_loop().create_task(hub.unsubscribe("room:x", self))

    overflowing = Overflowing("slow")
    await hub.subscribe("room:x", overflowing)
    for survivor in survivors:
        await hub.subscribe("room:x", survivor)
    await backplane.publish("room:x", 1)
    await wait_until(
        lambda: overflowing not in set(hub.subscribers("room:x")), what="overflowing subscriber removed"
    )
    await backplane.publish("room:x", 2)
    assert [m["data"] for m in overflowing.messages()] == [1]
    assert all([m["data"] for m in s.messages()] == [1, 2] for s in survivors)
