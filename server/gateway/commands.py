"""Carrying out client commands once the session has allowed them (the I/O half of the rules).

The session (pure) decides what may run and what a connect subscribes; this module
does the awaiting: tokens and connection limits, room membership, the hub, the
backplane, presence and notifications. The connection driver calls
:meth:`CommandRunner.submit` for each command in arrival order. Every command gets exactly one reply; failures become error
replies (503 ``temporary`` when the backplane is down, 500 otherwise) and never
carry exception text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from tidings.server.channels import Channel
from tidings.server.cluster.backplane import Backplane, HistoryPage, Publication, Sender
from tidings.server.cluster.presence import Member
from tidings.server.cluster.presence import Presence as PresenceStore
from tidings.server.cluster.rooms import CachedRooms
from tidings.server.config import Settings
from tidings.server.errors import StoreUnavailable
from tidings.server.gateway import client_commands as op
from tidings.server.gateway.auth import AuthError, TokenVerifier
from tidings.server.gateway.connection import Connection
from tidings.server.gateway.hub import Hub, Subscriber
from tidings.server.gateway.limits import ConnectionLimits
from tidings.server.gateway.protocol import (
    CLOSE_RATE_LIMITED,
    CLOSE_UNAUTHENTICATED,
    ERR_BACKPLANE,
    ERR_FORBIDDEN,
    ERR_INTERNAL,
    ERR_NOT_FOUND,
    ProtocolError,
    StreamPosition,
    error_reply,
    ok_reply,
)
from tidings.server.gateway.recovery import Recovery, recover
from tidings.server.gateway.session import Forbidden, Join
from tidings.server.metrics import NodeMetrics

if TYPE_CHECKING:
    from tidings.server.notify.notifier import Notifier

__all__ = ["CommandRunner", "ReplyBudget", "history_result", "presence_result", "publication_dict"]

logger = logging.getLogger("tidings.commands")

MAX_RECOVERY = 1000  # publications a resubscribe may recover; beyond that the client reloads
MAX_PUBLISHES_IN_FLIGHT = 32  # per connection; the reader waits (and uvicorn stops reading) beyond it


def publication_dict(publication: Publication) -> dict[str, Any]:
    """A publication as it appears inside replies (``history``, recovery)."""
    result: dict[str, Any] = {
        "channel": publication.channel,
        "epoch": publication.epoch,
        "offset": publication.offset,
        "data": publication.data,
        "ts": publication.ts,
    }
    if publication.sender is not None:
        result["from"] = publication.sender.encode()
    return result


def history_result(page: HistoryPage, *, reverse: bool) -> dict[str, Any]:
    """A history page as the ``history`` op and ``GET .../history`` answer it.

    A page that left publications out (its limit or its byte bound) carries ``cursor``: the
    fields to send with the next request to read on (``since`` reading oldest first, ``before``
    reading newest first).
    """
    result: dict[str, Any] = {
        **page.top.encode(),
        "publications": [publication_dict(p) for p in page.publications],
    }
    if page.more and page.publications:
        last = page.publications[-1]
        assert last.offset is not None  # history holds no ephemeral publication
        result["cursor"] = (
            {"before": last.offset}
            if reverse
            else {"since": StreamPosition(last.epoch, last.offset).encode()}
        )
    return result


def presence_result(members: list[Member], *, max_bytes: int) -> dict[str, Any]:
    """A channel's members as the ``presence`` op and ``GET .../presence`` answer them.

    At most ``max_bytes`` of members (a room of many thousands must not close the asker's
    connection as too slow): a reply that left some out says ``complete: false`` and ``total``.
    """
    encoded: list[dict[str, Any]] = []
    size = 0
    for member in members:
        item = member.encode()
        # An estimate, not an encoding: user, client and node ids plus the info map and punctuation.
        size += len(member.user) + len(member.client) + len(member.node) + len(repr(member.info)) + 64
        if size > max_bytes and encoded:
            return {"members": encoded, "complete": False, "total": len(members)}
        encoded.append(item)
    return {"members": encoded}


class ReplyBudget:
    """Bytes of publications one reply may still carry; the channels of a ``connect`` share one."""

    __slots__ = ("remaining",)

    def __init__(self, size: int) -> None:
        self.remaining = size

    def spend(self, size: int) -> None:
        self.remaining = max(0, self.remaining - size)


class CommandRunner:
    """Runs commands for the connections of one node."""

    def __init__(
        self,
        settings: Settings,
        backplane: Backplane,
        hub: Hub,
        verifier: TokenVerifier,
        presence: PresenceStore,
        rooms: CachedRooms,
        *,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.backplane = backplane
        self.hub = hub
        self.verifier = verifier
        self.presence = presence
        self.rooms = rooms
        self.notifier = notifier  # None: notifications are off on this node
        self.limits = ConnectionLimits(
            max_connections=settings.max_connections,
            max_user_connections=settings.max_user_connections,
            max_handshakes=settings.max_handshakes,
        )
        self.metrics = NodeMetrics()  # event counters for /metrics (gateway/metrics.py reads the rest)

    async def submit(self, connection: Connection, command: op.Command) -> None:
        """Take the next command of ``connection`` (the reader calls this in arrival order).

        A publish returns as soon as it is queued on the backplane; its reply follows when
        Redis answers. So consecutive publishes of one connection are pipelined, at most
        ``MAX_PUBLISHES_IN_FLIGHT`` at once, and still reach the backplane in arrival order
        (the backplane keeps the order in which publishes are started). Any other command
        first waits for them: it sees their effects, and its reply follows theirs. Replies
        keep command order.
        """
        if not isinstance(command, op.Publish):
            await connection.publishes.settle()
            await self.run(connection, command)
            return
        try:
            await self._check_room_access(connection, command.channel)
        except Exception as exc:
            await connection.publishes.settle()  # replies keep command order
            self._reply_error(connection, command, exc)
            return
        await connection.publishes.admit(MAX_PUBLISHES_IN_FLIGHT)
        # Created now, first run in creation order: each queues its publish before anything can wait.
        connection.publishes.add(asyncio.get_running_loop().create_task(self.run(connection, command)))

    async def run(self, connection: Connection, command: op.Command) -> None:
        """Carry out ``command`` and queue its reply."""
        releases: list[tuple[str, StreamPosition]] = []
        try:
            result = await self._dispatch(connection, command, releases)
        except Exception as exc:
            self._reply_error(connection, command, exc)
        else:
            if result is not None:
                connection.send(ok_reply(command.id, result))
        finally:
            # Publications held during (re)subscribes follow the reply, never precede it.
            for channel, top in releases:
                connection.release(channel, after=top)

    def _reply_error(self, connection: Connection, command: op.Command, exc: Exception) -> None:
        if isinstance(exc, ProtocolError):
            connection.send(error_reply(command.id, exc.code, exc.message))
        elif isinstance(exc, StoreUnavailable):
            connection.send(error_reply(command.id, ERR_BACKPLANE, "backplane unavailable", temporary=True))
        else:
            logger.error("command %s failed on connection %s", command.op, connection.client_id, exc_info=exc)
            connection.send(error_reply(command.id, ERR_INTERNAL, "internal error"))

    async def _dispatch(
        self, connection: Connection, command: op.Command, releases: list[tuple[str, StreamPosition]]
    ) -> dict[str, Any] | None:
        if isinstance(command, op.Connect):
            return await self._connect(connection, command, releases)
        if isinstance(command, op.Subscribe):
            budget = ReplyBudget(self.settings.reply_budget)
            return await self._subscribe(connection, command.channel, command.since, releases, budget)
        if isinstance(command, op.Unsubscribe):
            await self.drop_subscription(connection, command.channel)
            return {}
        if isinstance(command, op.Publish):  # access was checked by submit(), in arrival order
            sender = Sender(connection.session.user, connection.client_id)
            started = time.perf_counter()
            position = await self.backplane.publish(
                command.channel.text, command.data, sender=sender, ephemeral=command.ephemeral
            )
            self.metrics.publish_latency.observe(time.perf_counter() - started)
            return {} if position is None else position.encode()
        if isinstance(command, op.History):
            await self._check_room_access(connection, command.channel)
            page = await self.backplane.history(
                command.channel.text,
                since=command.since,
                limit=command.limit,
                reverse=command.reverse,
                before=command.before,
                max_bytes=self.settings.reply_budget,
            )
            return history_result(page, reverse=command.reverse)
        if isinstance(command, op.Presence):
            await self._check_room_access(connection, command.channel)
            members = await self.presence.members(command.channel.text)
            return presence_result(members, max_bytes=self.settings.reply_budget)
        if isinstance(command, (op.Notifications, op.Read)):
            if self.notifier is None:
                raise ProtocolError("notifications are not enabled on this node", code=ERR_NOT_FOUND)
            user = connection.session.user
            if isinstance(command, op.Read):
                return {"unread": await self.notifier.read(user, command.ids, read_all=command.all)}
            return await self.notifier.page(
                user,
                unread_only=command.unread_only,
                limit=command.limit,
                before=command.before,
                max_bytes=self.settings.reply_budget,
            )
        if isinstance(command, op.Ping):
            return {}
        raise AssertionError(f"unhandled command {command!r}")  # decode_command returns only the types above

    async def _connect(
        self, connection: Connection, command: op.Connect, releases: list[tuple[str, StreamPosition]]
    ) -> dict[str, Any] | None:
        try:
            principal = self.verifier.verify(command.token)
        except AuthError as exc:
            connection.close(CLOSE_UNAUTHENTICATED, str(exc))
            return None
        if not self.limits.add_user(principal.user):
            connection.close(CLOSE_RATE_LIMITED, "too many connections for this user")
            return None
        plan = connection.session.open(principal, command, now=time.time())
        self.hub.register(connection)
        try:
            if self.notifier is None:
                channels, unread = await self._connect_channels(connection, plan, releases), 0
            else:  # both at once: the check-in shares a round trip with the subscriptions' calls
                # One task for the check-in beside this one (asyncio.gather would make two).
                check_in = asyncio.ensure_future(self.notifier.check_in(principal.user))
                try:
                    channels = await self._connect_channels(connection, plan, releases)
                except BaseException:
                    check_in.cancel()
                    with contextlib.suppress(BaseException):
                        await check_in
                    raise
                unread = await check_in
        except BaseException:
            # Half way (e.g. Redis went away): undo it all, so that the client may send connect again.
            await self._undo_connect(connection, releases)
            raise
        return {
            "client": connection.client_id,
            "user": principal.user,
            "node": self.backplane.node_id,
            "ping_interval": self.settings.ping_interval,
            "channels": channels,
            "unread": unread,
        }

    async def _connect_channels(
        self, connection: Connection, plan: list[Join | Forbidden], releases: list[tuple[str, StreamPosition]]
    ) -> dict[str, Any]:
        """Subscribe what the session planned for a ``connect`` (in its order); one reply budget for all."""
        channels: dict[str, Any] = {}
        budget = ReplyBudget(self.settings.reply_budget)
        for item in plan:
            channel = item.channel
            if isinstance(item, Forbidden):
                channels[channel.text] = item.result()
                continue
            try:
                channels[channel.text] = await self._subscribe(
                    connection, channel, item.since, releases, budget
                )
            except ProtocolError as exc:  # e.g. a private room: refused per channel, the connect succeeds
                channels[channel.text] = {"error": {"code": exc.code, "message": exc.message}}
        return channels

    async def _undo_connect(self, connection: Connection, releases: list[tuple[str, StreamPosition]]) -> None:
        # What was held is dropped only once the hub has let go of the connection: released any
        # earlier, a publication arriving meanwhile would reach the client before any connect reply.
        held = [channel for channel, _ in releases]
        releases.clear()
        try:
            self.hub.unregister(connection)
            self.limits.remove_user(connection.session.user)
            for channel in list(connection.session.channels.values()):
                try:
                    await self.drop_subscription(connection, channel)
                except StoreUnavailable:
                    # The hub let go of it; a presence entry left in Redis goes with the dead-node sweep.
                    await self.hub.unsubscribe(channel.text, connection)
            connection.session.reset()
        finally:
            for channel_text in held:
                connection.release(channel_text, after=None)

    async def _subscribe(
        self,
        connection: Connection,
        channel: Channel,
        since: StreamPosition | None,
        releases: list[tuple[str, StreamPosition]],
        budget: ReplyBudget,
    ) -> dict[str, Any]:
        generation = self.rooms.generation
        await self._check_room_access(connection, channel)
        text = channel.text
        # Hold live publications from the moment the backplane delivers them until the reply is queued,
        # then release those not already in the reply: no gap, no duplicate (DESIGN.md, Guarantee 2).
        connection.hold(text)
        try:
            await self.hub.subscribe(text, connection)
        except BaseException:
            connection.release(text, after=None)
            raise
        try:
            # Where this node already carries the channel, its own position is the top: no round trip.
            position = self.backplane.position(text)
            if since is None:
                top = position if position is not None else await self.backplane.top(text)
                result: dict[str, Any] = top.encode()
            elif since == position:  # missed nothing (a reconnect storm's usual case)
                top, result = since, {**since.encode(), "recovered": True, "publications": []}
            else:
                top, result = await self._recover(text, since, budget)
        except BaseException:
            try:
                await self.hub.unsubscribe(text, connection)  # first: nothing reaches it unheld
            finally:
                connection.release(text, after=None)
            raise
        connection.session.add_channel(channel)
        releases.append((text, top))
        if self.rooms.generation != generation:
            # Room access changed while this subscribe was under way: a kick sent meanwhile may have
            # passed before this connection was in the hub. Ask again now that it is.
            try:
                await self._check_room_access(connection, channel)
            except BaseException:
                releases.pop()
                try:
                    await self.drop_subscription(connection, channel)
                finally:
                    connection.release(text, after=None)
                raise
        if channel.tracks_presence:
            await self._add_presence(connection, channel)
        return result

    async def _recover(
        self, channel: str, since: StreamPosition, budget: ReplyBudget
    ) -> tuple[StreamPosition, dict[str, Any]]:
        """The top and the subscribe result of a resubscribe from ``since``, within ``budget`` bytes.

        What does not fit is not recovered (``recovered: false``): the client reads history
        page by page instead. Never a reply bigger than the budget, which would close the
        connection as too slow and make it ask for the same again, forever.
        """
        page = await self.backplane.history(
            channel, since=since, limit=MAX_RECOVERY, max_bytes=max(1, budget.remaining)
        )
        top = page.top
        if not top.epoch:  # never published: give it the epoch its first publication will carry
            top = await self.backplane.top(channel)
        fits = not page.more and (page.size <= budget.remaining or not page.publications)
        if fits:
            recovery = recover(since, top, page.publications, limit=MAX_RECOVERY)
            budget.spend(page.size)
        else:
            recovery = Recovery(False, [])  # read it page by page with history instead
        return top, {
            **top.encode(),
            "recovered": recovery.recovered,
            "publications": [publication_dict(p) for p in recovery.publications],
        }

    async def _check_room_access(self, connection: Subscriber, channel: Channel) -> None:
        room = channel.room_name
        if room is not None and not await self.rooms.may_access(room, connection.session.user):
            raise ProtocolError(f"{channel} is a private room you are not a member of", code=ERR_FORBIDDEN)

    def member(self, connection: Subscriber) -> Member:
        principal = connection.session.principal
        assert principal is not None
        return Member(principal.user, connection.client_id, self.backplane.node_id, {"name": principal.name})

    async def _add_presence(self, connection: Subscriber, channel: Channel) -> None:
        member = self.member(connection)
        await self.presence.add(channel.text, member)
        if channel.announces_presence:
            await self.announce(channel.text, "join", member)

    async def announce(self, channel: str, event: str, member: Member) -> None:
        """Publish a ``join``/``leave`` push to every subscriber of ``channel`` on every node."""
        await self.backplane.publish(channel, {"push": event, "member": member.encode()}, ephemeral=True)

    async def announce_leave(self, channel: str, member: Member) -> None:
        """The ``leave`` push of a member whose node died (liveness), for channels that announce presence."""
        try:
            announces = Channel.parse(channel).announces_presence
        except ProtocolError:
            return  # not a channel a client subscribed: nobody to tell
        if announces:
            await self.announce(channel, "leave", member)

    async def drop_subscription(self, connection: Subscriber, channel: Channel) -> None:
        """End one subscription: hub, session, presence and the ``leave`` push."""
        await self.hub.unsubscribe(channel.text, connection)
        if channel.text not in connection.session.channels:
            return
        connection.session.remove_channel(channel)
        if channel.tracks_presence:
            member = self.member(connection)
            await self.presence.remove(channel.text, member)
            if channel.announces_presence:
                await self.announce(channel.text, "leave", member)

    async def readd_presence(self) -> None:
        """Re-add the presence of every local subscription (after this node was presumed dead)."""
        for subscriber in list(self.hub.connections.values()):
            if not subscriber.closed:
                for channel in list(subscriber.session.channels.values()):
                    if channel.tracks_presence:
                        await self._add_presence(subscriber, channel)

    async def disconnected(self, connection: Connection) -> None:
        """Clean up after a connection ended, however it ended."""
        connection.closed = True
        self.hub.unregister(connection)
        self.metrics.connection_ended(connection.close_code, connection.dropped_frames)
        if connection.session.principal is None:
            return
        self.limits.remove_user(connection.session.user)
        for channel in list(connection.session.channels.values()):
            try:
                await self.drop_subscription(connection, channel)
            except StoreUnavailable:
                # The entries stay in Redis; the dead-node sweep or the next heartbeat fixes presence.
                logger.warning(
                    "could not clean up %s of %s: backplane unavailable", channel, connection.client_id
                )
        connection.session.channels.clear()
