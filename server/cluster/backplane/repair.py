"""Gap repair: reading from history what the pub/sub link missed, and handing it on in order.

Pub/sub is at-most-once. When a channel's offset jumps, or the link came back after a loss
(every channel then "maybe gapped"), the backplane schedules the channel here. The repairer
reads the gap from the stream, a batch of channels per pipelined round trip, each read bounded
in count and bytes, and hands the publications on in offset order; the pure rules of what to
hand on and when to read again are in tracking.py (DESIGN.md, Guarantee 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from tidings.server.cluster.backplane import BackplaneUnavailable, HistoryPage, Publication
from tidings.server.cluster.backplane.tracking import OffsetTracker

__all__ = ["GapRepair", "Repairable"]

logger = logging.getLogger("tidings.backplane.redis")

_REPAIR_BATCH = 128  # channels read in one pipelined round trip while repairing
_REPAIR_LIMIT = 1000  # publications read per channel per round trip
_REPAIR_BYTES = 256 * 1024  # and about this many bytes of them: a batch of channels stays bounded in memory

ReadAfter = Callable[[str, int, int, int], Awaitable[HistoryPage]]
"""``read(channel, after, limit, max_bytes)``: a history page, oldest first."""


class Repairable(Protocol):
    """What the repairer needs of a channel's state in the backplane."""

    track: OffsetTracker
    confirmed: bool  # the link confirmed SUBSCRIBE: reads now cover what it missed
    wanted: bool  # the hub still wants the channel: hand on what is read


@dataclass(eq=False)
class GapRepair:
    """Schedules and runs history reads for gapped channels (one task at a time).

    Args:
        read: reads a history page.
        state_of: the channel's current state, or None when it is no longer subscribed.
        deliver: hands one publication on to the node.
        backoff: seconds to wait after a failed round of reads (by attempt).
        generation: changes whenever the link is lost; reads of an older link are dropped.
    """

    read: ReadAfter
    state_of: Callable[[str], Repairable | None]
    deliver: Callable[[Publication], None]
    backoff: Callable[[int], float]
    generation: Callable[[], int]
    repaired: int = 0  # publications handed on from history because pub/sub missed them
    gap_repairs: int = 0  # history reads that closed (part of) a gap
    _pending: dict[str, None] = field(default_factory=dict)  # channels waiting for a history read, in order
    _task: asyncio.Task[None] | None = None

    def schedule(self, channel: str) -> None:
        self._pending[channel] = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def clear(self) -> None:
        """The link was lost: channels are repaired after the next link confirms them."""
        self._pending.clear()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        """Read gaps from history, a batch of channels per pipelined round trip, until none is left."""
        attempt = 0
        try:
            while self._pending:
                batch = list(itertools.islice(self._pending, _REPAIR_BATCH))
                for channel in batch:
                    del self._pending[channel]
                if await self._read_batch(batch):
                    attempt = 0
                else:
                    await asyncio.sleep(self.backoff(attempt))
                    attempt += 1
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _read_batch(self, batch: list[str]) -> bool:
        """One round trip for ``batch``; False if a read failed (its channel is scheduled again)."""
        jobs = []
        for channel in batch:
            state = self.state_of(channel)
            if state is not None and state.track.gapped and state.confirmed:
                jobs.append((channel, state, state.track.read_request()))
        generation = self.generation()
        pages = await asyncio.gather(
            *(self.read(channel, request[1], _REPAIR_LIMIT, _REPAIR_BYTES) for channel, _, request in jobs),
            return_exceptions=True,
        )
        if generation != self.generation():
            return True  # the link was lost meanwhile: the next one repairs after resubscribing
        ok = True
        for (channel, state, request), page in zip(jobs, pages, strict=True):
            if isinstance(page, HistoryPage):
                self._repair(channel, state, request, page)
                continue
            if isinstance(page, asyncio.CancelledError):
                raise page
            if not isinstance(page, BackplaneUnavailable):
                logger.error("reading the gap of %s failed: %r", channel, page)
            ok = False
            self._pending[channel] = None
        return ok

    def _repair(
        self, channel: str, state: Repairable, request: tuple[str | None, int], page: HistoryPage
    ) -> None:
        """Hand on what a history read found; read again until it covers what live showed."""
        if self.state_of(channel) is not state or not state.confirmed:
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
                self.deliver(publication)
        if repair.again:
            self.schedule(channel)
