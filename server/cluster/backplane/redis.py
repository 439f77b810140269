"""RedisBackplane: pub/sub fan-out between nodes plus Streams history, over redis-py asyncio.

A channel's stream (its ``meta`` hash and history, the Lua publish and read) is in
streams.py; its pub/sub channel carries live envelopes ``<epoch>:<offset>:<payload>``
(envelope.py). The live order is the history order (docs/guarantees.md).

Each node keeps ONE pub/sub connection (the *link*). A channel is SUBSCRIBEd when
the hub asks for it and UNSUBSCRIBEd when it lets go; requests made while a write
is under way are coalesced into one command. The reader only parses and hands
publications to the handler synchronously, so Redis never drops the node for
lagging (``client-output-buffer-limit pubsub``).

Pub/sub is at-most-once, so the node tracks the last offset it relayed per
channel. An offset jump, or a reconnect of the link (every channel is then
"maybe gapped"), makes the node read the gap from the stream and hand it on in
order before live publications of that channel go on; live publications that
arrive meanwhile are dropped, because the reads go on until they cover them. No
offset is handed on twice or out of order (repair.py, tracking.py).

When Redis is unreachable every operation raises BackplaneUnavailable within the
short socket timeouts, ``ready`` is False, and the link reconnects with capped
exponential backoff plus jitter, logging each change of state once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool

from tidings.server.cluster.backplane import (
    BackplaneUnavailable,
    HistoryPage,
    HistoryPolicy,
    Publication,
    PublicationHandler,
    Sender,
    StreamPosition,
)
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.backplane.envelope import (
    decode_publication,
    split_envelope,
)
from tidings.server.cluster.backplane.pipeline import CommandPipeline
from tidings.server.cluster.backplane.repair import GapRepair
from tidings.server.cluster.backplane.streams import ChannelStreams
from tidings.server.cluster.backplane.tracking import OffsetTracker, Verdict
from tidings.server.cluster.backplane.watchdog import LinkWatchdog, push_as_is
from tidings.server.cluster.redis_errors import REDIS_ERRORS

__all__ = ["RedisBackplane"]

# What ends a pub/sub link: Redis errors, or a reply the parser cannot read (ValueError).
_LINK_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, ValueError)

logger = logging.getLogger("tidings.backplane.redis")


_SUBSCRIBE, _UNSUBSCRIBE = "SUBSCRIBE", "UNSUBSCRIBE"
_MAX_CHANNELS_PER_COMMAND = 1000


@dataclass(slots=True, eq=False)
class _Channel:
    """What this node knows of one channel it subscribes (or is subscribing) to."""

    wanted: bool = True  # the hub wants it; False: an UNSUBSCRIBE is queued
    sent: bool = False  # SUBSCRIBE written on the current link
    confirmed: bool = False  # Redis confirmed SUBSCRIBE on the current link: publications flow
    failed: bool = False  # the subscription was given up (link lost before it was synced)
    changed: asyncio.Event | None = field(default_factory=asyncio.Event)  # wakes subscribe() until synced
    track: OffsetTracker = field(default_factory=OffsetTracker)

    @property
    def synced(self) -> bool:
        return self.track.synced


@dataclass(frozen=True, slots=True)
class _LinkTiming:
    """How long Redis may take, and how the pub/sub link retries (seconds; see RedisBackplane)."""

    socket_timeout: float
    connect_timeout: float
    health_interval: float
    min_backoff: float
    max_backoff: float


class RedisBackplane:
    """The Backplane contract over Redis or Valkey (see the package docstring for the guarantees).

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        node_id: this node's id (named in the connect reply and ``CLIENT LIST``).
        key_prefix: starts every key and pub/sub channel; one cluster per prefix.
        policies: history size and TTL per namespace; key ``""`` is the default.
        socket_timeout: seconds a command may take before Redis counts as unreachable.
        connect_timeout: seconds a connection attempt may take.
        health_interval: seconds of silence on the link after which it is PINGed; no
            answer within another interval counts as a lost link.
        min_backoff, max_backoff: reconnect delays of the link, in seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        key_prefix: str = "tidings",
        policies: Mapping[str, HistoryPolicy] | None = None,
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        health_interval: float = 3.0,
        min_backoff: float = 0.05,
        max_backoff: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self._prefix = key_prefix
        self._timing = _LinkTiming(socket_timeout, connect_timeout, health_interval, min_backoff, max_backoff)
        self._pool = ConnectionPool.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
        )
        self._pipeline = CommandPipeline(
            self._new_connection("commands", timed=False), timeout=socket_timeout
        )
        self._streams = ChannelStreams(self._pipeline, key_prefix=key_prefix, policies=policies or {})
        self._handler: PublicationHandler | None = None
        self._channels: dict[str, _Channel] = {}
        self._pending: dict[str, str] = {}  # channel → SUBSCRIBE | UNSUBSCRIBE, not written yet
        self._stale_acks: dict[str, int] = {}  # SUBSCRIBE confirmations that belong to abandoned requests
        self._link: AbstractConnection | None = None  # the pub/sub connection while it is up
        self._link_generation = 0  # bumped on every loss: history reads of an older link are stale
        self._link_task: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._repair = GapRepair(
            lambda channel, after, limit, max_bytes: self._streams.read(
                channel, after=after, limit=limit, max_bytes=max_bytes
            ),
            self._channels.get,
            self._deliver,
            self._backoff,
            lambda: self._link_generation,
        )
        self._link_up = asyncio.Event()
        self._closed = False
        self.link_reconnects = 0  # times the link came back after a loss (for tests and /metrics)

    def _new_connection(self, role: str, *, timed: bool = True) -> AbstractConnection:
        """A dedicated connection; ``timed=False``: no per-call socket timeout (the caller bounds its waits)."""
        kwargs = dict(self._pool.connection_kwargs)
        kwargs["client_name"] = redis_keys.client_name(self._prefix, self.node_id, role)
        if not timed:
            kwargs["socket_timeout"] = None
        return self._pool.connection_class(**kwargs)

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self, handler: PublicationHandler) -> None:
        """Start the link and wait (up to the connect timeout) for it to come up.

        A Redis that is down at start is not an error: ``ready`` stays False and the
        link keeps trying, so the node recovers by itself.
        """
        self._handler = handler
        self._link_task = asyncio.get_running_loop().create_task(self._run_link())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timing.connect_timeout + self._timing.socket_timeout):
                await self._link_up.wait()

    async def close(self) -> None:
        self._closed = True
        await self._repair.close()
        for task in (self._link_task, self._sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._link_task = self._sender = None
        for state in self._channels.values():
            self._fail(state)
        self._channels.clear()
        self._pending.clear()
        await self._pipeline.close()
        await self._pool.disconnect()

    @property
    def repaired(self) -> int:
        """Publications handed on from history because pub/sub missed them (metrics.CountsLinkRecoveries)."""
        return self._repair.repaired

    @property
    def gap_repairs(self) -> int:
        """History reads that closed (part of) a gap (metrics.CountsGapRepairs)."""
        return self._repair.gap_repairs

    @property
    def ready(self) -> bool:
        return self._link_up.is_set()

    # --- publishing and reading ----------------------------------------------------------------------

    async def publish(
        self, channel: str, data: Any, *, sender: Sender | None = None, ephemeral: bool = False
    ) -> StreamPosition | None:
        return await self._streams.publish(channel, data, sender=sender, ephemeral=ephemeral)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 100,
        reverse: bool = False,
        before: int | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        after = since.offset if since is not None else 0
        return await self._streams.read(
            channel, after=after, limit=limit, reverse=reverse, before=before, max_bytes=max_bytes
        )

    async def top(self, channel: str) -> StreamPosition:
        page = await self._streams.read(channel, after=0, limit=0, create=True)
        return page.top

    # --- subscriptions -------------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe this node to ``channel``; return once publications after the current top flow.

        Raises:
            BackplaneUnavailable: the link is down, or was lost before the subscription took.
        """
        if not self._link_up.is_set():
            raise BackplaneUnavailable("the Redis pub/sub link is down")
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
            self._request(channel, _SUBSCRIBE)
        else:
            state.wanted = True
            if self._pending.get(channel) == _UNSUBSCRIBE:
                # Never left Redis, and its offset was tracked all along: cancel the UNSUBSCRIBE.
                del self._pending[channel]
        if state.synced:
            return
        try:
            await self._sync(channel, state)
        except BaseException:
            self._abandon(channel, state)
            raise

    async def _sync(self, channel: str, state: _Channel) -> None:
        """Wait for the SUBSCRIBE confirmation, then take the channel's top as the baseline."""
        try:
            async with asyncio.timeout(self._timing.socket_timeout):
                while not state.confirmed and not state.failed:
                    assert state.changed is not None  # cleared only once synced
                    state.changed.clear()
                    await state.changed.wait()
        except TimeoutError as exc:
            raise BackplaneUnavailable("Redis did not confirm SUBSCRIBE in time") from exc
        if state.failed:
            raise BackplaneUnavailable("the Redis pub/sub link was lost while subscribing")
        # Read after the confirmation: every later publication reaches us live. Those in between
        # (seen live while this read was on its way) only move the baseline up.
        top = await self.top(channel)
        if state.failed or self._channels.get(channel) is not state:
            raise BackplaneUnavailable("the Redis pub/sub link was lost while subscribing")
        if state.synced:
            return  # another subscribe() of the same channel got there first
        state.track.settle(top)
        state.changed = None

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``; the UNSUBSCRIBE itself is written in the background. Never raises."""
        state = self._channels.get(channel)
        if state is None or not state.wanted:
            return
        self._abandon(channel, state)

    def _abandon(self, channel: str, state: _Channel) -> None:
        if self._channels.get(channel) is not state:
            return
        state.wanted = False
        if not state.synced:
            self._fail(state)
        if self._link is None or self._pending.get(channel) == _SUBSCRIBE:
            # Redis never heard of it (or the link is gone and it will not be resubscribed).
            self._pending.pop(channel, None)
            del self._channels[channel]
        else:
            self._request(channel, _UNSUBSCRIBE)

    @staticmethod
    def _fail(state: _Channel) -> None:
        state.failed = True
        if state.changed is not None:
            state.changed.set()

    def _request(self, channel: str, op: str) -> None:
        self._pending[channel] = op
        self._start_sender()

    def _start_sender(self) -> None:
        if self._sender is None and self._link is not None and self._pending:
            self._sender = asyncio.get_running_loop().create_task(self._send_requests())

    async def _send_requests(self) -> None:
        """Write queued (UN)SUBSCRIBEs; whatever queues up during a write goes out in the next one."""
        try:
            while self._pending and (link := self._link) is not None:
                pending, self._pending = self._pending, {}
                subscribe, unsubscribe = [], []
                for channel, op in pending.items():
                    state = self._channels.get(channel)
                    if state is None:
                        continue
                    if op == _SUBSCRIBE and state.wanted and not state.sent:
                        state.sent = True
                        subscribe.append(redis_keys.channel_pubsub(self._prefix, channel))
                    elif op == _UNSUBSCRIBE and not state.wanted:
                        del self._channels[channel]
                        if state.sent and not state.confirmed:
                            # Its confirmation is still on the way: it must not confirm a later SUBSCRIBE.
                            self._stale_acks[channel] = self._stale_acks.get(channel, 0) + 1
                        unsubscribe.append(redis_keys.channel_pubsub(self._prefix, channel))
                commands = [(_UNSUBSCRIBE, *chunk) for chunk in _chunks(unsubscribe)]
                commands += [(_SUBSCRIBE, *chunk) for chunk in _chunks(subscribe)]
                if commands:
                    await link.send_packed_command(link.pack_commands(commands), False)
        except REDIS_ERRORS as exc:
            # The reader notices the broken link as well; the next link resubscribes everything.
            logger.debug("writing to the pub/sub link failed: %r", exc)
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None
                self._start_sender()  # requests of a new link that queued while this write hung

    # --- the link ------------------------------------------------------------------------------------

    async def _run_link(self) -> None:
        """Keep the pub/sub connection up: connect, resubscribe, read; on loss back off and retry."""
        attempt = 0
        was_up: bool | None = None
        while not self._closed:
            link = self._new_connection("pubsub")
            try:
                try:
                    await link.connect_check_health(check_health=False)
                except REDIS_ERRORS as exc:
                    if was_up is not False:
                        logger.warning(
                            "Redis unreachable (%s); node %s retries with backoff", exc, self.node_id
                        )
                        was_up = False
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                # Not redis-py's default push handler (see push_as_is); its own PubSub swaps it the same way.
                link._parser.set_pubsub_push_handler(push_as_is)  # type: ignore[attr-defined]
                if was_up is False:
                    self.link_reconnects += 1
                logger.info("Redis pub/sub link up (node %s, %d channels)", self.node_id, len(self._channels))
                was_up, attempt = True, 0
                try:
                    await self._serve_link(link)
                except _LINK_ERRORS as exc:
                    logger.warning("Redis pub/sub link lost (%s); node %s reconnects", exc, self.node_id)
                except Exception:
                    logger.exception("the Redis pub/sub reader failed; node %s reconnects", self.node_id)
                was_up = False
                self._link_lost()
            finally:
                if self._link is link:
                    self._link_lost()
                await link.disconnect(nowait=True)
            await asyncio.sleep(self._backoff(0))

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter: spreads a herd of nodes after a Redis restart."""
        timing = self._timing
        ceiling = min(timing.max_backoff, timing.min_backoff * 2 ** min(attempt, 30))
        return random.uniform(ceiling / 2, ceiling)

    async def _serve_link(self, link: AbstractConnection) -> None:
        self._link = link
        self._link_up.set()
        for channel, state in self._channels.items():
            if state.wanted:
                self._request(channel, _SUBSCRIBE)
        # Silence is watched by a timer, not by a timeout around every read: that costs ~9 µs per
        # message on the hottest path of the node (every publication of every subscribed channel).
        watchdog = LinkWatchdog(link, self._timing.health_interval, self.node_id)
        try:
            while True:
                response = await link.read_response(timeout=math.inf, push_request=True)
                watchdog.heard += 1
                self._on_response(response)
        finally:
            watchdog.stop()

    def _link_lost(self) -> None:
        """Forget the link: subscriptions that were not synced fail, the others wait to be repaired."""
        self._link = None
        self._link_generation += 1
        self._link_up.clear()
        self._pending.clear()
        self._stale_acks.clear()
        for channel, state in list(self._channels.items()):
            if not state.wanted or not state.synced:
                self._fail(state)
                del self._channels[channel]
                continue
            state.sent = state.confirmed = False
            state.track.link_lost()
        self._repair.clear()  # repaired after the new link confirms each channel

    def _on_response(self, response: Any) -> None:
        """One reply read from the link. Runs synchronously: parse and hand off, never wait."""
        kind = response[0]
        if kind == b"message":
            channel = redis_keys.channel_from_pubsub(self._prefix, response[1])
            state = self._channels.get(channel) if channel is not None else None
            if channel is not None and state is not None and state.confirmed:
                self._on_publication(channel, state, response[2])
        elif kind == b"subscribe":
            channel = redis_keys.channel_from_pubsub(self._prefix, response[1])
            if channel is not None:
                self._on_confirmed(channel)
        # "unsubscribe" confirmations and PING replies need nothing.

    def _on_confirmed(self, channel: str) -> None:
        stale = self._stale_acks.get(channel, 0)
        if stale:
            if stale == 1:
                del self._stale_acks[channel]
            else:
                self._stale_acks[channel] = stale - 1
            return
        state = self._channels.get(channel)
        if state is None or state.confirmed:
            return
        state.confirmed = True
        if state.changed is not None:
            state.changed.set()
        if state.synced and state.track.gapped:
            # Resubscribed after a lost link: whatever was published meanwhile is in the stream.
            self._repair.schedule(channel)

    def _on_publication(self, channel: str, state: _Channel, message: bytes) -> None:
        try:
            epoch, offset, payload = split_envelope(message)
        except ValueError:
            logger.warning("dropped a malformed message on %s", channel)
            return
        if offset is None:  # ephemeral: at-most-once, no position to keep
            if state.synced and state.wanted:
                self._hand_on(channel, epoch, None, payload)
            return
        verdict = state.track.on_live(epoch, offset)
        if verdict is Verdict.DELIVER:
            # Not wanted: an UNSUBSCRIBE is queued; the offset is still tracked in case it is undone.
            if state.wanted:
                self._hand_on(channel, epoch, offset, payload)
        elif verdict is Verdict.READ_GAP:
            logger.info("%s: offset jumped to %d; reading the gap from history", channel, offset)
            self._repair.schedule(channel)

    def _hand_on(self, channel: str, epoch: str, offset: int | None, payload: bytes) -> None:
        try:
            publication = decode_publication(channel, epoch, offset, payload)
        except ValueError:
            logger.warning("dropped an undecodable publication on %s", channel)
            return
        self._deliver(publication)

    def _deliver(self, publication: Publication) -> None:
        if self._handler is None:
            return
        try:
            self._handler(publication)
        except Exception:
            logger.exception("the publication handler failed on %s", publication.channel)


def _chunks(names: list[str]) -> list[list[str]]:
    return [names[i : i + _MAX_CHANNELS_PER_COMMAND] for i in range(0, len(names), _MAX_CHANNELS_PER_COMMAND)]
