"""RedisBackplane: pub/sub fan-out between nodes plus Streams history, over redis-py asyncio.

Per channel (all keys hash-tagged ``{channel}``, names in keys.py):
  * ``meta`` hash: ``epoch`` (one life of the stream) and ``offset`` (the top);
  * ``stream``: the history, entry id ``<offset>-0``, trimmed with ``MAXLEN ~``;
  * pub/sub channel: live envelopes ``<epoch>:<offset>:<payload>`` (envelope.py).

``publish.lua`` bumps the offset, appends and publishes in one step, so the live
order is the history order (DESIGN.md, Guarantee 3).

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
offset is handed on twice or out of order (DESIGN.md, Guarantee 2).

When Redis is unreachable every operation raises BackplaneUnavailable within the
short socket timeouts, ``ready`` is False, and the link reconnects with capped
exponential backoff plus jitter, logging each change of state once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool

from tidings.server.channels import namespace_of
from tidings.server.cluster.backplane import (
    HISTORY_OVERHEAD,
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
    encode_payload,
    ephemeral_envelope,
    offset_of_entry_id,
    split_envelope,
)
from tidings.server.cluster.backplane.pipeline import CommandPipeline, Script
from tidings.server.cluster.backplane.tracking import OffsetTracker, Verdict
from tidings.server.cluster.backplane.watchdog import LinkWatchdog, push_as_is
from tidings.server.cluster.redis_errors import REDIS_ERRORS

__all__ = ["RedisBackplane"]

# What ends a pub/sub link: Redis errors, or a reply the parser cannot read (ValueError).
_LINK_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, ValueError)

logger = logging.getLogger("tidings.backplane.redis")

PUBLISH_SCRIPT = Script(Path(__file__).with_name("publish.lua").read_text())
HISTORY_SCRIPT = Script(Path(__file__).with_name("history.lua").read_text())

_SUBSCRIBE, _UNSUBSCRIBE = "SUBSCRIBE", "UNSUBSCRIBE"
_MAX_CHANNELS_PER_COMMAND = 1000
_REPAIR_BATCH = 128  # channels read in one pipelined round trip while repairing
_REPAIR_LIMIT = 1000  # publications read per channel per round trip
_REPAIR_BYTES = 256 * 1024  # and about this many bytes of them: a batch of channels stays bounded in memory


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
        self._policies = dict(policies or {})
        self._default_policy = self._policies.get("", HistoryPolicy())
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._health_interval = health_interval
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._pool = ConnectionPool.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
        )
        self._pipeline = CommandPipeline(
            self._new_connection("commands", timed=False), timeout=socket_timeout
        )
        self._epoch_prefix = secrets.token_hex(3)
        self._epoch_counter = itertools.count(1)
        self._handler: PublicationHandler | None = None
        self._channels: dict[str, _Channel] = {}
        self._pending: dict[str, str] = {}  # channel → SUBSCRIBE | UNSUBSCRIBE, not written yet
        self._stale_acks: dict[str, int] = {}  # SUBSCRIBE confirmations that belong to abandoned requests
        self._link: AbstractConnection | None = None  # the pub/sub connection while it is up
        self._link_generation = 0  # bumped on every loss: history reads of an older link are stale
        self._link_task: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._repairs: dict[str, None] = {}  # channels waiting for a history read, in order
        self._repair_task: asyncio.Task[None] | None = None
        self._link_up = asyncio.Event()
        self._closed = False
        self.link_reconnects = 0  # times the link came back after a loss (for tests and /metrics)
        self.repaired = 0  # publications handed on from history because pub/sub missed them
        self.gap_repairs = 0  # history reads that closed (part of) a gap (metrics.CountsGapRepairs)

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
            async with asyncio.timeout(self._connect_timeout + self._socket_timeout):
                await self._link_up.wait()

    async def close(self) -> None:
        self._closed = True
        for task in (self._link_task, self._sender, self._repair_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._link_task = self._sender = self._repair_task = None
        for state in self._channels.values():
            self._fail(state)
        self._channels.clear()
        self._pending.clear()
        await self._pipeline.close()
        await self._pool.disconnect()

    @property
    def ready(self) -> bool:
        return self._link_up.is_set()

    # --- publishing and reading ----------------------------------------------------------------------

    def _policy(self, channel: str) -> HistoryPolicy:
        return self._policies.get(namespace_of(channel), self._default_policy)

    def _new_epoch(self) -> str:
        return f"{self._epoch_prefix}{next(self._epoch_counter):x}"

    async def publish(
        self, channel: str, data: Any, *, sender: Sender | None = None, ephemeral: bool = False
    ) -> StreamPosition | None:
        payload = encode_payload(data, sender, int(time.time() * 1000))
        pubsub_name = redis_keys.channel_pubsub(self._prefix, channel)
        if ephemeral:
            await self._pipeline.call("PUBLISH", pubsub_name, ephemeral_envelope(payload))
            return None
        policy = self._policy(channel)
        epoch, offset = await self._pipeline.evalsha(
            PUBLISH_SCRIPT,
            [
                redis_keys.channel_meta(self._prefix, channel),
                redis_keys.channel_stream(self._prefix, channel),
            ],
            [pubsub_name, payload, policy.size, _ttl_ms(policy), self._new_epoch()],
        )
        return StreamPosition(epoch.decode(), int(offset))

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
        return await self._read(
            channel,
            after=since.offset if since is not None else 0,
            limit=limit,
            reverse=reverse,
            before=before,
            max_bytes=max_bytes,
        )

    async def top(self, channel: str) -> StreamPosition:
        page = await self._read(channel, after=0, limit=0, create=True)
        return page.top

    async def _read(
        self,
        channel: str,
        *,
        after: int,
        limit: int,
        reverse: bool = False,
        before: int | None = None,
        max_bytes: int | None = None,
        create: bool = False,
    ) -> HistoryPage:
        policy = self._policy(channel)
        epoch_raw, top, entries, more = await self._pipeline.evalsha(
            HISTORY_SCRIPT,
            [
                redis_keys.channel_meta(self._prefix, channel),
                redis_keys.channel_stream(self._prefix, channel),
            ],
            [
                self._new_epoch(),
                _ttl_ms(policy),
                after,
                limit,
                int(reverse),
                policy.size,
                max_bytes or 0,
                int(create),
                before or 0,
            ],
        )
        epoch = epoch_raw.decode()
        publications = []
        size = 0
        for entry_id, fields in entries:
            payload = _field(fields, b"p")
            size += len(payload) + HISTORY_OVERHEAD
            publications.append(decode_publication(channel, epoch, offset_of_entry_id(entry_id), payload))
        return HistoryPage(StreamPosition(epoch, int(top)), publications, more=bool(more), size=size)

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
            async with asyncio.timeout(self._socket_timeout):
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
        ceiling = min(self._max_backoff, self._min_backoff * 2 ** min(attempt, 30))
        return random.uniform(ceiling / 2, ceiling)

    async def _serve_link(self, link: AbstractConnection) -> None:
        self._link = link
        self._link_up.set()
        for channel, state in self._channels.items():
            if state.wanted:
                self._request(channel, _SUBSCRIBE)
        # Silence is watched by a timer, not by a timeout around every read: that costs ~9 µs per
        # message on the hottest path of the node (every publication of every subscribed channel).
        watchdog = LinkWatchdog(link, self._health_interval, self.node_id)
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
        self._repairs.clear()  # repaired after the new link confirms each channel

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
            self._schedule_repair(channel)

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
            self._schedule_repair(channel)

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

    # --- gap repair ----------------------------------------------------------------------------------

    def _schedule_repair(self, channel: str) -> None:
        self._repairs[channel] = None
        if self._repair_task is None:
            self._repair_task = asyncio.get_running_loop().create_task(self._run_repairs())

    async def _run_repairs(self) -> None:
        """Read gaps from history, a batch of channels per pipelined round trip, until none is left."""
        attempt = 0
        try:
            while self._repairs and not self._closed:
                batch = list(itertools.islice(self._repairs, _REPAIR_BATCH))
                for channel in batch:
                    del self._repairs[channel]
                jobs = []
                for channel in batch:
                    state = self._channels.get(channel)
                    if state is not None and state.track.gapped and state.confirmed:
                        jobs.append((channel, state, state.track.read_request()))
                generation = self._link_generation
                pages = await asyncio.gather(
                    *(
                        self._read(channel, after=request[1], limit=_REPAIR_LIMIT, max_bytes=_REPAIR_BYTES)
                        for channel, _, request in jobs
                    ),
                    return_exceptions=True,
                )
                if generation != self._link_generation:
                    continue  # the link was lost meanwhile: the next one repairs after resubscribing
                failed = False
                for (channel, state, request), page in zip(jobs, pages, strict=True):
                    if isinstance(page, HistoryPage):
                        self._repair(channel, state, request, page)
                        continue
                    if isinstance(page, asyncio.CancelledError):
                        raise page
                    if not isinstance(page, BackplaneUnavailable):
                        logger.error("reading the gap of %s failed: %r", channel, page)
                    failed = True
                    self._repairs[channel] = None
                if failed:
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
                else:
                    attempt = 0
        finally:
            if self._repair_task is asyncio.current_task():
                self._repair_task = None

    def _repair(
        self, channel: str, state: _Channel, request: tuple[str | None, int], page: HistoryPage
    ) -> None:
        """Hand on what a history read found; read again until it covers what live showed."""
        if self._channels.get(channel) is not state or not state.confirmed:
            return
        repair = state.track.on_history(request, page, limit=_REPAIR_LIMIT)
        if repair.new_epoch and request[1] != 0:
            logger.warning("%s: the stream was lost or expired; it starts a new epoch", channel)
        for first, last in repair.lost:
            logger.warning(
                "%s: offsets %d-%d left history before this node could relay them", channel, first, last
            )
        if repair.publications:
            self.gap_repairs += 1
        for publication in repair.publications:
            self.repaired += 1
            if state.wanted:
                self._deliver(publication)
        if repair.again:
            self._schedule_repair(channel)


def _ttl_ms(policy: HistoryPolicy) -> int:
    return max(1, int(policy.ttl * 1000))


def _field(fields: list[bytes], name: bytes) -> bytes:
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    raise ValueError(f"stream entry without field {name!r}")


def _chunks(names: list[str]) -> list[list[str]]:
    return [names[i : i + _MAX_CHANNELS_PER_COMMAND] for i in range(0, len(names), _MAX_CHANNELS_PER_COMMAND)]
