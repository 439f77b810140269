"""The Backplane contract, run over every implementation: whatever memory does, Redis must match.

Then Redis-only behaviour, on a real server: coalesced SUBSCRIBEs, gaps closed from history
(a lost pub/sub message, a pub/sub link really dropped with CLIENT KILL while publishing),
and Redis going away and coming back.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import pytest
import redis.asyncio as aioredis

from tidings.server.cluster.backplane import (
    Backplane,
    BackplaneUnavailable,
    HistoryPolicy,
    Publication,
    Sender,
    StreamPosition,
)
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.backplane.envelope import encode_payload
from tidings.server.cluster.backplane.memory import InMemoryBackplane
from tidings.server.cluster.backplane.redis import RedisBackplane
from tidings.server.cluster.backplane.streams import PUBLISH_SCRIPT
from tidings.server.devcluster.valkey import ValkeyServer

from .support.timing import UNIT, wait_until


class Recorder:
    """A publication handler that keeps what it is given."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []

    def __call__(self, publication: Publication) -> None:
        self.publications.append(publication)

    def of(self, channel: str) -> list[Publication]:
        return [p for p in self.publications if p.channel == channel]

    def offsets(self, channel: str) -> list[int | None]:
        return [p.offset for p in self.of(channel)]

    async def wait_for(self, channel: str, count: int, *, within: float = 5 * UNIT) -> list[Publication]:
        await wait_until(lambda: len(self.of(channel)) >= count, timeout=within, what=f"{count} on {channel}")
        return self.of(channel)


OpenBackplane = Callable[..., Awaitable[tuple[Backplane, Recorder]]]


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("cluster", marks=pytest.mark.redis),
    ]
)
async def open_backplane(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[OpenBackplane]:
    """``await open_backplane(policies=...)`` → a started backplane and the recorder it delivers to."""
    opened: list[Backplane] = []

    async def open_(*, policies: Mapping[str, HistoryPolicy] | None = None) -> tuple[Backplane, Recorder]:
        backplane: Backplane
        if request.param == "memory":
            backplane = InMemoryBackplane(node_id="n1", policies=policies)
        else:
            if request.param == "cluster":  # a 3-primary Redis Cluster: sharded pub/sub, a link per shard
                url = request.getfixturevalue("redis_cluster").url
            else:
                url = request.getfixturevalue("redis_url")
            backplane = RedisBackplane(
                url, node_id=f"n{len(opened) + 1}", key_prefix=key_prefix, policies=policies
            )
        recorder = Recorder()
        await backplane.start(recorder)
        opened.append(backplane)
        return backplane, recorder

    try:
        yield open_
    finally:
        for backplane in opened:
            await backplane.close()


# --- the contract --------------------------------------------------------------------------------


async def test_offsets_are_consecutive_and_the_epoch_stable(open_backplane: OpenBackplane) -> None:
    backplane, _ = await open_backplane()
    positions = [await backplane.publish("room:a", {"n": n}) for n in range(5)]
    positions += await asyncio.gather(*(backplane.publish("room:a", {"n": n}) for n in range(5, 30)))
    assert all(p is not None for p in positions)
    assert sorted(p.offset for p in positions if p) == list(range(1, 31))
    assert [p.offset for p in positions[:5] if p] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in positions if p}) == 1
    assert await backplane.top("room:a") == StreamPosition(positions[0].epoch, 30)  # type: ignore[union-attr]


async def test_a_new_channel_has_offset_0_and_keeps_its_epoch(open_backplane: OpenBackplane) -> None:
    """A subscriber of an empty channel learns the epoch the first publication will carry."""
    backplane, _ = await open_backplane()
    top = await backplane.top("room:new")
    assert top.offset == 0 and top.epoch
    assert await backplane.top("room:new") == top
    assert await backplane.publish("room:new", "first") == StreamPosition(top.epoch, 1)


async def test_history_since_limit_and_reverse(open_backplane: OpenBackplane) -> None:
    backplane, _ = await open_backplane()
    for n in range(1, 11):
        await backplane.publish("room:h", {"n": n})

    async def offsets(**kwargs: object) -> list[int | None]:
        page = await backplane.history("room:h", **kwargs)  # type: ignore[arg-type]
        assert page.top.offset == 10
        assert all(p.data == {"n": p.offset} and p.epoch == page.top.epoch for p in page.publications)
        return [p.offset for p in page.publications]

    epoch = (await backplane.top("room:h")).epoch
    assert await offsets() == list(range(1, 11))
    assert await offsets(since=StreamPosition(epoch, 4)) == [5, 6, 7, 8, 9, 10]
    assert await offsets(limit=3) == [1, 2, 3]
    assert await offsets(since=StreamPosition(epoch, 4), limit=3) == [5, 6, 7]
    assert await offsets(reverse=True, limit=3) == [10, 9, 8]
    assert await offsets(since=StreamPosition(epoch, 8), reverse=True, limit=5) == [10, 9]
    assert await offsets(since=StreamPosition(epoch, 10)) == []


async def test_history_keeps_at_most_size_publications(open_backplane: OpenBackplane) -> None:
    backplane, _ = await open_backplane(
        policies={"": HistoryPolicy(size=1000), "room": HistoryPolicy(size=5)}
    )
    for n in range(1, 31):
        await backplane.publish("room:small", n)
        await backplane.publish("user:big", n)
    epoch = (await backplane.top("room:small")).epoch
    assert [p.offset for p in (await backplane.history("room:small")).publications] == [26, 27, 28, 29, 30]
    since = StreamPosition(epoch, 10)
    assert [p.offset for p in (await backplane.history("room:small", since=since)).publications] == [
        26,
        27,
        28,
        29,
        30,
    ]
    assert [
        p.offset for p in (await backplane.history("room:small", reverse=True, limit=2)).publications
    ] == [30, 29]
    assert len((await backplane.history("user:big")).publications) == 30


@pytest.mark.redis
async def test_history_lives_its_ttl_after_every_publication(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    """After each publication both of a channel's keys have the history TTL left: renewed every time."""
    ttl = 2.0
    backplane = RedisBackplane(
        redis_url, node_id="n1", key_prefix=key_prefix, policies={"": HistoryPolicy(size=100, ttl=ttl)}
    )
    await backplane.start(Recorder())
    keys = [redis_keys.channel_meta(key_prefix, "room:t"), redis_keys.channel_stream(key_prefix, "room:t")]
    try:
        for _ in range(20):
            await backplane.publish("room:t", "x")
            left = [await redis_client.pttl(key) for key in keys]
            # (less the time the PTTL round trips took on a busy machine)
            assert all(ttl * 1000 - 250 <= ms <= ttl * 1000 for ms in left), left
    finally:
        await backplane.close()


async def test_data_sender_and_time_survive_the_trip(open_backplane: OpenBackplane) -> None:
    backplane, recorder = await open_backplane()
    await backplane.subscribe("room:d")
    data = {"text": "grüß dich 👋", "list": [1, 2.5, None, True], "nested": {"k": "v"}, "big": 2**62}
    before = int(time.time() * 1000)
    await backplane.publish("room:d", data, sender=Sender("alice", "c1"))
    await backplane.publish("room:d", "from a backend")
    first, second = await recorder.wait_for("room:d", 2)
    assert first.data == data and first.sender == Sender("alice", "c1")
    assert before - 1000 <= first.ts <= int(time.time() * 1000) + 1000
    assert second.data == "from a backend" and second.sender is None
    history = (await backplane.history("room:d")).publications
    assert [(p.data, p.sender, p.ts) for p in history] == [(p.data, p.sender, p.ts) for p in (first, second)]


async def test_handler_gets_only_subscribed_channels_in_offset_order(open_backplane: OpenBackplane) -> None:
    backplane, recorder = await open_backplane()
    await backplane.subscribe("room:in")
    await asyncio.gather(
        *(backplane.publish("room:in", n) for n in range(50)),
        *(backplane.publish("room:out", n) for n in range(50)),
    )
    await backplane.publish("room:in", "last")
    publications = await recorder.wait_for("room:in", 51)
    assert [p.offset for p in publications] == list(range(1, 52))
    assert recorder.of("room:out") == []
    assert sorted(p.data for p in publications[:50]) == list(range(50))


async def test_publishes_started_without_waiting_keep_their_start_order(
    open_backplane: OpenBackplane,
) -> None:
    """The pipelining contract: tasks started in order publish in that order (offsets and delivery)."""
    backplane, recorder = await open_backplane()
    await backplane.subscribe("room:pipelined")
    tasks = [
        asyncio.get_running_loop().create_task(backplane.publish("room:pipelined", n)) for n in range(64)
    ]
    positions = await asyncio.gather(*tasks)
    assert [p.offset for p in positions if p is not None] == list(range(1, 65))
    publications = await recorder.wait_for("room:pipelined", 64)
    assert [p.data for p in publications] == list(range(64))


async def test_ephemeral_publications_have_no_offset_and_no_history(open_backplane: OpenBackplane) -> None:
    backplane, recorder = await open_backplane()
    await backplane.subscribe("room:typing")
    top = await backplane.top("room:typing")
    assert (
        await backplane.publish("room:typing", {"typing": True}, ephemeral=True, sender=Sender("bob", "c2"))
        is None
    )
    [publication] = await recorder.wait_for("room:typing", 1)
    assert publication.offset is None and publication.data == {"typing": True}
    assert publication.sender == Sender("bob", "c2")
    assert await backplane.top("room:typing") == top
    assert (await backplane.history("room:typing")).publications == []


async def test_unsubscribe_stops_delivery(open_backplane: OpenBackplane) -> None:
    backplane, recorder = await open_backplane()
    await backplane.subscribe("room:u")
    await backplane.subscribe("room:marker")
    await backplane.publish("room:u", 1)
    await recorder.wait_for("room:u", 1)
    await backplane.unsubscribe("room:u")
    await backplane.publish("room:u", 2)
    await backplane.publish("room:marker", "after")  # pub/sub keeps order on one link
    await recorder.wait_for("room:marker", 1)
    assert recorder.offsets("room:u") == [1]


async def test_resubscribing_delivers_again_exactly_once(open_backplane: OpenBackplane) -> None:
    """Subscribe and unsubscribe in quick succession leave one working subscription, no duplicates."""
    backplane, recorder = await open_backplane()
    for _ in range(3):
        await backplane.subscribe("room:flip")
        await backplane.unsubscribe("room:flip")
    await backplane.subscribe("room:flip")
    for n in range(5):
        await backplane.publish("room:flip", n)
    await recorder.wait_for("room:flip", 5)
    await backplane.subscribe("room:marker")
    await backplane.publish("room:marker", "end")
    await recorder.wait_for("room:marker", 1)
    assert recorder.offsets("room:flip") == [1, 2, 3, 4, 5]


# --- Redis only ------------------------------------------------------------------------------------


async def numsub(client: aioredis.Redis, prefix: str, channel: str) -> int:
    [(_, count)] = await client.pubsub_numsub(redis_keys.channel_pubsub(prefix, channel))
    return int(count)


async def kill_pubsub_link(client: aioredis.Redis, prefix: str, node_id: str) -> int:
    """Drop a node's pub/sub connection from the server side (``CLIENT KILL``), as a network cut would."""
    name = redis_keys.client_name(prefix, node_id, "pubsub")
    killed = 0
    for entry in await client.client_list(_type="pubsub"):
        if entry.get("name") == name:
            killed += await client.client_kill_filter(_id=entry["id"])
    return killed


@pytest.fixture
async def redis_backplanes(
    redis_url: str, key_prefix: str
) -> AsyncIterator[Callable[..., Awaitable[RedisBackplane]]]:
    opened: list[RedisBackplane] = []

    async def open_(handler: Callable[[Publication], None], **kwargs: object) -> RedisBackplane:
        url = str(kwargs.pop("url", redis_url))
        backplane = RedisBackplane(url, node_id=f"n{len(opened) + 1}", key_prefix=key_prefix, **kwargs)  # type: ignore[arg-type]
        opened.append(backplane)
        await backplane.start(handler)
        return backplane

    try:
        yield open_
    finally:
        for backplane in opened:
            await backplane.close()


@pytest.mark.redis
async def test_concurrent_subscribes_are_coalesced_into_few_commands(
    redis_backplanes: Callable[..., Awaitable[RedisBackplane]], redis_client: aioredis.Redis, key_prefix: str
) -> None:
    backplane = await redis_backplanes(Recorder())

    async def subscribe_calls() -> int:
        stats = await redis_client.info("commandstats")
        return int(stats.get("cmdstat_subscribe", {}).get("calls", 0))

    before = await subscribe_calls()
    channels = [f"room:c{n}" for n in range(100)]
    await asyncio.gather(*(backplane.subscribe(channel) for channel in channels))
    assert await subscribe_calls() - before <= 2
    assert [await numsub(redis_client, key_prefix, c) for c in channels[:3]] == [1, 1, 1]
    await asyncio.gather(*(backplane.unsubscribe(channel) for channel in channels))

    async def all_gone() -> bool:
        return await numsub(redis_client, key_prefix, channels[-1]) == 0

    await wait_until(all_gone, what="UNSUBSCRIBE to reach Redis")


@pytest.mark.redis
async def test_a_lost_pubsub_message_is_read_from_history(
    redis_backplanes: Callable[..., Awaitable[RedisBackplane]], redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """An offset jump makes the node read the gap from the stream, then go on in order."""
    recorder = Recorder()
    backplane = await redis_backplanes(recorder)
    await backplane.subscribe("room:gap")
    await backplane.publish("room:gap", 1)
    # Offset 2 goes into the stream but its PUBLISH goes elsewhere: pub/sub "lost" it.
    await redis_client.eval(  # type: ignore[misc]
        PUBLISH_SCRIPT.source,
        2,
        redis_keys.channel_meta(key_prefix, "room:gap"),
        redis_keys.channel_stream(key_prefix, "room:gap"),
        f"{key_prefix}:nowhere",
        encode_payload(2, None, int(time.time() * 1000)),
        1000,
        60_000,
        "unused",
        "PUBLISH",
        (await redis_client.info("server"))["run_id"],
    )
    await backplane.publish("room:gap", 3)
    publications = await recorder.wait_for("room:gap", 3)
    assert [(p.offset, p.data) for p in publications] == [(1, 1), (2, 2), (3, 3)]
    await backplane.publish("room:gap", 4)
    await recorder.wait_for("room:gap", 4)
    assert recorder.offsets("room:gap") == [1, 2, 3, 4]


@pytest.mark.redis
async def test_dropping_the_pubsub_link_while_publishing_loses_nothing(
    redis_backplanes: Callable[..., Awaitable[RedisBackplane]], redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """CLIENT KILL on the subscriber's pub/sub connection, three times, mid-stream: every offset once, in order."""
    recorder = Recorder()
    subscriber = await redis_backplanes(recorder)
    publisher = await redis_backplanes(Recorder())
    channels = ["room:k1", "room:k2"]
    for channel in channels:
        await subscriber.subscribe(channel)
    published = 0
    stop = asyncio.Event()

    async def publish_until_stopped() -> None:
        nonlocal published
        while not stop.is_set() and published < 100_000:
            await asyncio.gather(*(publisher.publish(channel, published) for channel in channels))
            published += 1

    publishing = asyncio.create_task(publish_until_stopped())
    try:
        for round_ in range(1, 4):
            await wait_until(lambda r=round_: len(recorder.of("room:k1")) >= r * 50)  # type: ignore[misc]
            assert await kill_pubsub_link(redis_client, key_prefix, subscriber.node_id) == 1
            await wait_until(lambda r=round_: subscriber.link_reconnects >= r, what="the link to come back")  # type: ignore[misc]
        await wait_until(lambda: len(recorder.of("room:k1")) >= 200)
    finally:
        stop.set()
        await publishing
    for channel in channels:
        publications = await recorder.wait_for(channel, published, within=10 * UNIT)
        assert [p.offset for p in publications] == list(range(1, published + 1))
        assert [p.data for p in publications] == list(range(published))
    assert subscriber.repaired > 0  # the drops did cost pub/sub messages, and history made up for them
    assert subscriber.link_reconnects == 3


@pytest.mark.redis
async def test_position_is_the_last_publication_handed_on_and_unknown_while_a_gap_is_open(
    redis_backplanes: Callable[..., Awaitable[RedisBackplane]], redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """What a connect may use instead of a top() round trip: exact when known, None when it may lag."""
    recorder = Recorder()
    subscriber = await redis_backplanes(recorder)
    publisher = await redis_backplanes(Recorder())
    assert subscriber.position("room:pos") is None  # not subscribed here
    await subscriber.subscribe("room:pos")
    top = await publisher.top("room:pos")
    assert subscriber.position("room:pos") == top
    positions = [await publisher.publish("room:pos", n) for n in range(3)]
    await recorder.wait_for("room:pos", 3)
    assert subscriber.position("room:pos") == positions[-1]
    assert await kill_pubsub_link(redis_client, key_prefix, subscriber.node_id) == 1
    await wait_until(lambda: subscriber.position("room:pos") is None, what="the position to be unknown")
    last = await publisher.publish("room:pos", 3)
    await recorder.wait_for("room:pos", 4, within=10 * UNIT)  # the gap repaired from history
    await wait_until(lambda: subscriber.position("room:pos") == last, what="the position known again")
    await subscriber.unsubscribe("room:pos")
    assert subscriber.position("room:pos") is None


@pytest.mark.redis
async def test_a_silent_link_is_pinged_then_dropped_and_reconnected(
    redis_backplanes: Callable[..., Awaitable[RedisBackplane]],
) -> None:
    """A Redis that stops answering (SIGSTOP: the socket stays open) is noticed by the link's watchdog."""
    server = ValkeyServer().start()
    assert server.process is not None
    try:
        recorder = Recorder()
        backplane = await redis_backplanes(
            recorder, url=server.url, health_interval=0.2 * UNIT, max_backoff=0.2
        )
        await backplane.subscribe("room:s")
        server.process.send_signal(signal.SIGSTOP)
        await wait_until(lambda: not backplane.ready, timeout=5 * UNIT, what="the silent link to be dropped")
        server.process.send_signal(signal.SIGCONT)
        await wait_until(
            lambda: backplane.link_reconnects >= 1, timeout=10 * UNIT, what="the link to come back"
        )
        await backplane.publish("room:s", "after")
        assert [p.data for p in await recorder.wait_for("room:s", 1)] == ["after"]
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()


@pytest.mark.redis
async def test_unreachable_redis_fails_fast_then_recovers_by_itself(
    redis_backplanes: Callable[..., Awaitable[RedisBackplane]],
) -> None:
    server = ValkeyServer().start()
    try:
        recorder = Recorder()
        backplane = await redis_backplanes(recorder, url=server.url, max_backoff=0.5)
        await backplane.subscribe("room:r")
        await backplane.publish("room:r", "before")
        await recorder.wait_for("room:r", 1)
        assert backplane.ready

        server.stop()
        await wait_until(lambda: not backplane.ready, what="ready to turn False")
        for operation in (
            backplane.publish("room:r", "down"),
            backplane.history("room:r"),
            backplane.subscribe("room:other"),
        ):
            started = time.monotonic()
            with pytest.raises(BackplaneUnavailable):
                await operation
            assert time.monotonic() - started < 1.5 * UNIT

        server = ValkeyServer(port=server.port).start()  # a new, empty server on the same address
        await wait_until(lambda: backplane.ready, timeout=10 * UNIT, what="the link to come back")
        position = await backplane.publish("room:r", "after")
        assert position is not None and position.offset == 1  # the data was lost: a new epoch
        publications = await recorder.wait_for("room:r", 2)
        assert publications[-1].data == "after" and publications[-1].epoch == position.epoch
    finally:
        server.stop()
