"""One pub/sub connection to one Redis server (the *link*), the channels it carries, and their repair.

A single Redis, or a Sentinel-managed primary, has one link per node; a Redis Cluster has one per
shard primary (sharded pub/sub: SSUBSCRIBE, so a publication reaches only its shard's subscribers).
A channel is (S)SUBSCRIBEd when the hub asks for it and (S)UNSUBSCRIBEd when it lets go;
requests made while a write is under way are coalesced into one write. The reader only parses
and hands publications on synchronously, so Redis never drops the node for lagging
(``client-output-buffer-limit pubsub``).

Pub/sub is at-most-once, so the link tracks the last offset it relayed per channel. An offset
jump, a reconnect (every channel is then "maybe gapped"), or a channel moved here from another
shard makes the link read the gap from the stream and hand it on in order before live
publications of that channel go on (repair.py, tracking.py). No offset is handed on twice or out
of order.

While the server is unreachable, ``ready`` is False and the link reconnects with capped
exponential backoff plus jitter, logging each change of state once. Each connection attempt asks
``connect`` for a fresh connection, so a Sentinel deployment reaches whichever server is primary now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from tidings.server.cluster.backplane import BackplaneUnavailable, Publication, StreamPosition
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.backplane.envelope import decode_publication, split_envelope
from tidings.server.cluster.backplane.link_state import ChannelState, LinkTiming
from tidings.server.cluster.backplane.repair import GapRepair, ReadAfter
from tidings.server.cluster.backplane.resp import RespConnection
from tidings.server.cluster.backplane.tracking import OffsetTracker, Verdict
from tidings.server.cluster.backplane.watchdog import LinkWatchdog
from tidings.server.cluster.redis_errors import REDIS_ERRORS

__all__ = ["LinkTiming", "PubSubLink"]  # LinkTiming re-exported for redis.py

# What ends a pub/sub link: Redis errors, or a reply the parser cannot read (ValueError).
_LINK_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, ValueError)

logger = logging.getLogger("tidings.backplane.redis")

_SUBSCRIBE, _UNSUBSCRIBE = "SUBSCRIBE", "UNSUBSCRIBE"
_MAX_CHANNELS_PER_COMMAND = 1000


class PubSubLink:
    """The pub/sub side of one Redis server for one node.

    Args:
        connect: opens a new connection (resp.py) that hands every reply to the given callback.
        name: what the logs call this link (the server's address).
        key_prefix, node_id: as in RedisBackplane.
        timing: timeouts and backoff.
        sharded: use SSUBSCRIBE/SUNSUBSCRIBE (Redis Cluster), one channel per command.
        read: reads a history page of a channel (for gap repair).
        deliver: takes each publication, in offset order per channel.
        top: reads a channel's top position (the baseline of a new subscription).
        on_moved: called when the server says a channel is served elsewhere now (cluster only).
    """

    def __init__(
        self,
        connect: Callable[[Callable[[Any], None]], Awaitable[RespConnection]],
        *,
        name: str,
        key_prefix: str,
        node_id: str,
        timing: LinkTiming,
        sharded: bool,
        read: ReadAfter,
        deliver: Callable[[Publication], None],
        top: Callable[[str], Any],
        on_moved: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        self.node_id = node_id
        self._connect = connect
        self._prefix = key_prefix
        self._timing = timing
        self._sharded = sharded
        self._subscribe_cmd, self._unsubscribe_cmd = (
            ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded else (_SUBSCRIBE, _UNSUBSCRIBE)
        )
        self._message_kind = b"smessage" if sharded else b"message"
        self._confirm_kind = b"ssubscribe" if sharded else b"subscribe"
        self._deliver_one = deliver
        self._top = top
        self._on_moved = on_moved
        self._channels: dict[str, ChannelState] = {}
        self._pending: dict[str, str] = {}  # channel → SUBSCRIBE | UNSUBSCRIBE, not written yet
        self._stale_acks: dict[str, int] = {}  # SUBSCRIBE confirmations that belong to abandoned requests
        self._link: RespConnection | None = None  # the connection while it is up
        self._watchdog: LinkWatchdog | None = None
        self._generation = 0  # bumped on every loss: history reads of an older connection are stale
        self._task: asyncio.Task[None] | None = None
        self._send_scheduled = False
        self._repair = GapRepair(
            read, self._channels.get, self._deliver, timing.backoff, lambda: self._generation
        )
        self._up = asyncio.Event()
        self._closed = False
        self.reconnects = 0  # times the link came back after a loss
        self.failing = False  # the last connection attempt failed (the server may be gone)

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_up(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._up.wait()
        return self._up.is_set()

    async def close(self) -> None:
        self._closed = True
        await self._repair.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        for state in self._channels.values():
            self._fail(state)
        self._channels.clear()
        self._pending.clear()

    @property
    def ready(self) -> bool:
        return self._up.is_set()

    @property
    def repaired(self) -> int:
        return self._repair.repaired

    @property
    def gap_repairs(self) -> int:
        return self._repair.gap_repairs

    def position(self, channel: str) -> StreamPosition | None:
        """The last position handed on for a confirmed, synced channel without a gap; else None."""
        state = self._channels.get(channel)
        if state is None or not state.wanted or not state.confirmed or not state.synced or state.track.gapped:
            return None
        track = state.track
        return None if track.epoch is None else StreamPosition(track.epoch, track.offset)

    def channels(self) -> Iterator[str]:
        """The channels this link carries or is subscribing to, wanted by the hub."""
        return (channel for channel, state in self._channels.items() if state.wanted)

    # --- subscriptions -------------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel``; return once publications after the current top flow.

        Raises:
            BackplaneUnavailable: the link is down, or was lost before the subscription took.
        """
        if not self._up.is_set():
            raise BackplaneUnavailable(f"the Redis pub/sub link to {self.name} is down")
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = ChannelState()
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

    async def _sync(self, channel: str, state: ChannelState) -> None:
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
        top = await self._top(channel)
        if state.failed or self._channels.get(channel) is not state:
            raise BackplaneUnavailable("the Redis pub/sub link was lost while subscribing")
        if state.synced:
            return  # another subscribe() of the same channel got there first
        state.track.settle(top)
        state.changed = None

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``; the UNSUBSCRIBE itself is written in the background. Never raises."""
        state = self._channels.get(channel)
        if state is None or not state.wanted:
            return
        self._abandon(channel, state)

    def release(self, channel: str) -> OffsetTracker | None:
        """Hand ``channel`` over to another link: its tracker if it was synced (else it fails here)."""
        state = self._channels.get(channel)
        if state is None or not state.wanted:
            return None
        track = state.track if state.synced else None
        self._abandon(channel, state)
        return track

    def adopt(self, channel: str, track: OffsetTracker) -> None:
        """Carry a synced channel moved here from another shard: subscribe, then read what it missed."""
        state = ChannelState(changed=None, track=track)
        track.link_lost()  # whatever was published while it moved is read from history
        self._channels[channel] = state
        if self._link is not None:
            self._request(channel, _SUBSCRIBE)

    def resubscribe_unsent(self) -> None:
        """Ask again for wanted channels the server unsubscribed us from (a slot that moved back)."""
        if self._link is None:
            return
        for channel, state in self._channels.items():
            if state.wanted and not state.sent and channel not in self._pending:
                self._request(channel, _SUBSCRIBE)

    def _abandon(self, channel: str, state: ChannelState) -> None:
        if self._channels.get(channel) is not state:
            return
        state.wanted = False
        if not state.synced:
            self._fail(state)
        if self._link is None or not state.sent or self._pending.get(channel) == _SUBSCRIBE:
            # Redis never heard of it (or the link is gone and it will not be resubscribed).
            self._pending.pop(channel, None)
            del self._channels[channel]
        else:
            self._request(channel, _UNSUBSCRIBE)

    @staticmethod
    def _fail(state: ChannelState) -> None:
        state.failed = True
        if state.changed is not None:
            state.changed.set()

    def _request(self, channel: str, op: str) -> None:
        self._pending[channel] = op
        if not self._send_scheduled and self._link is not None:
            # Every request of this event-loop turn goes out in one write, at the end of the turn.
            self._send_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_requests)

    def _send_requests(self) -> None:
        """Write the queued (UN)SUBSCRIBEs (a write to the transport: it never waits)."""
        self._send_scheduled = False
        link = self._link
        if link is None or not self._pending:
            return
        pending, self._pending = self._pending, {}
        commands = self._commands_for(pending)
        try:
            if commands:
                link.write(commands)
        except REDIS_ERRORS as exc:
            # The connection noticed its loss as well; the next one resubscribes everything.
            logger.debug("writing to the pub/sub link failed: %r", exc)

    def _commands_for(self, pending: dict[str, str]) -> list[tuple[str, ...]]:
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
        # Sharded: every channel of one command must be in one slot, so one channel per command.
        size = 1 if self._sharded else _MAX_CHANNELS_PER_COMMAND
        commands = [(self._unsubscribe_cmd, *chunk) for chunk in _chunks(unsubscribe, size)]
        return commands + [(self._subscribe_cmd, *chunk) for chunk in _chunks(subscribe, size)]

    # --- the connection ------------------------------------------------------------------------------

    async def _run(self) -> None:
        """Keep the connection up: connect, resubscribe, read; on loss back off and retry."""
        attempt = 0
        was_up: bool | None = None
        while not self._closed:
            try:
                link = await self._connect(self._on_push)
            except REDIS_ERRORS as exc:
                if was_up is not False:
                    logger.warning("Redis %s unreachable (%s); node %s retries", self.name, exc, self.node_id)
                    was_up = False
                self.failing = True
                self._on_moved()  # a cluster may have moved this shard's slots elsewhere
                await asyncio.sleep(self._timing.backoff(attempt))
                attempt += 1
                continue
            try:
                if was_up is False:
                    self.reconnects += 1
                logger.info(
                    "Redis pub/sub link to %s up (node %s, %d channels)",
                    self.name,
                    self.node_id,
                    len(self._channels),
                )
                was_up, attempt, self.failing = True, 0, False
                try:
                    await self._serve(link)
                except _LINK_ERRORS as exc:
                    logger.warning(
                        "Redis pub/sub link to %s lost (%s); node %s reconnects", self.name, exc, self.node_id
                    )
                except Exception:
                    logger.exception("the Redis pub/sub reader failed; node %s reconnects", self.node_id)
                was_up = False
                self._lost()
                self._on_moved()
            finally:
                if self._link is link:
                    self._lost()
                link.close()
            await asyncio.sleep(self._timing.backoff(0))

    async def _serve(self, link: RespConnection) -> None:
        """Replies arrive in ``_on_push`` as they are read; this waits for the connection to end."""
        self._link = link
        self._up.set()
        for channel, state in self._channels.items():
            if state.wanted:
                self._request(channel, _SUBSCRIBE)
        # Silence is watched by a timer, not by a timeout around every read.
        self._watchdog = LinkWatchdog(link, self._timing.health_interval, self.node_id)
        try:
            await link.lost
        finally:
            self._watchdog.stop()
            self._watchdog = None
        raise RedisConnectionError("the connection was closed")

    def _on_push(self, response: Any) -> None:
        """Every reply read on the link, in order, synchronously from the connection's data_received."""
        if self._watchdog is not None:
            self._watchdog.heard += 1
        if isinstance(response, ResponseError):
            # MOVED for an SSUBSCRIBE whose slot is served elsewhere now: the topology is read again
            # and the channel moves.
            logger.info("pub/sub link to %s: %s", self.name, response)
            self._on_moved()
            return
        try:
            self._on_response(response)
        except Exception:
            logger.exception("the Redis pub/sub reader failed on a reply; node %s goes on", self.node_id)

    def _lost(self) -> None:
        """Forget the connection: subscriptions that were not synced fail, the others wait to be repaired."""
        self._link = None
        self._generation += 1
        self._up.clear()
        self._pending.clear()
        self._stale_acks.clear()
        for channel, state in list(self._channels.items()):
            if not state.wanted or not state.synced:
                self._fail(state)
                del self._channels[channel]
                continue
            state.sent = state.confirmed = False
            state.track.link_lost()
        self._repair.clear()  # repaired after the new connection confirms each channel

    def _on_response(self, response: Any) -> None:
        """One reply read from the link. Runs synchronously: parse and hand off, never wait."""
        if not isinstance(response, list):
            return  # PONG before any subscription
        kind = response[0]
        if kind == self._message_kind:
            channel = redis_keys.channel_from_pubsub(self._prefix, response[1])
            state = self._channels.get(channel) if channel is not None else None
            if channel is not None and state is not None and state.confirmed:
                self._on_publication(channel, state, response[2])
        elif kind == self._confirm_kind:
            channel = redis_keys.channel_from_pubsub(self._prefix, response[1])
            if channel is not None:
                self._on_confirmed(channel)
        elif kind == b"sunsubscribe":
            channel = redis_keys.channel_from_pubsub(self._prefix, response[1])
            if channel is not None:
                self._on_server_unsubscribed(channel)
        # "unsubscribe" confirmations and PING replies need nothing.

    def _on_server_unsubscribed(self, channel: str) -> None:
        """A SUNSUBSCRIBE we did not ask for: the channel's slot moved to another shard."""
        state = self._channels.get(channel)
        if state is None or not state.wanted or not state.confirmed:
            return  # our own SUNSUBSCRIBE's confirmation (its state is gone), or one not yet synced
        state.sent = state.confirmed = False
        if state.synced:
            state.track.link_lost()
        self._on_moved()

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
            # Resubscribed after a lost link (or moved here): whatever was published meanwhile is in the stream.
            self._repair.schedule(channel)

    def _on_publication(self, channel: str, state: ChannelState, message: bytes) -> None:
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
        try:
            self._deliver_one(publication)
        except Exception:
            logger.exception("the publication handler failed on %s", publication.channel)


def _chunks(names: list[str], size: int) -> list[list[str]]:
    return [names[i : i + size] for i in range(0, len(names), size)]
