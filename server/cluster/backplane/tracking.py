"""Per-channel offset tracking for a node's pub/sub link (pure: no I/O).

Redis pub/sub is at-most-once: a message is lost when the link drops (or the
server drops a lagging subscriber). Each node therefore remembers, per channel,
the position of the last publication it handed on, and decides for every live
message whether to hand it on, skip it (already handed on), or read a gap from
history first (DESIGN.md, Guarantee 2). The I/O around it is in redis.py.

Rules:
  * Until the baseline (the channel's top, read after SUBSCRIBE was confirmed) is
    known, live messages only move the baseline up: nobody on the node listens yet.
  * ``offset == last + 1``: hand on. ``offset <= last``: skip (already handed on,
    e.g. read from history). ``offset > last + 1``: a gap.
  * While a gap is being read ("gapped"), live messages are skipped: the reads go on
    until they cover the newest live message seen, so nothing is handed on twice or
    out of order, and nothing needs buffering.
  * A message or history page with another epoch means the stream was lost or
    expired and started a new life: tracking restarts at offset 0 of that epoch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tidings.server.cluster.backplane import HistoryPage, Publication, StreamPosition

__all__ = ["OffsetTracker", "Repair", "Verdict"]


class Verdict(enum.Enum):
    DELIVER = "deliver"  # hand the message on now
    SKIP = "skip"  # drop it: handed on already, or covered by a history read
    READ_GAP = "read gap"  # drop it and read the gap from history (the tracker is now gapped)


@dataclass(frozen=True, slots=True)
class Repair:
    """What one history read means for the channel."""

    publications: list[Publication] = field(default_factory=list)  # hand these on, in this order
    lost: list[tuple[int, int]] = field(default_factory=list)  # offset ranges history no longer holds
    again: bool = False  # read once more (the tracker is still gapped)
    new_epoch: bool = False  # the stream started a new life


@dataclass(slots=True, eq=False)
class OffsetTracker:
    """The position of the last publication of one channel that this node handed on."""

    epoch: str | None = None
    offset: int = 0
    synced: bool = False  # the baseline is known
    gapped: bool = False  # a gap is being read from history
    seen: tuple[str, int] | None = None  # the newest live position skipped while gapped
    seen_fresh: bool = False  # ``seen`` arrived after the pending history read was issued

    def on_live(self, epoch: str, offset: int) -> Verdict:
        """Decide about one live message of the channel."""
        if not self.synced:
            if epoch != self.epoch:
                self.epoch, self.offset = epoch, offset
            else:
                self.offset = max(self.offset, offset)
            return Verdict.SKIP
        if self.gapped:
            self.seen, self.seen_fresh = (epoch, offset), True
            return Verdict.SKIP
        if epoch != self.epoch:
            self.epoch, self.offset = epoch, 0
        if offset <= self.offset:
            return Verdict.SKIP
        if offset == self.offset + 1:
            self.offset = offset
            return Verdict.DELIVER
        self.gapped, self.seen, self.seen_fresh = True, (epoch, offset), True
        return Verdict.READ_GAP

    def settle(self, top: StreamPosition) -> None:
        """Take ``top`` (read after SUBSCRIBE was confirmed) as the baseline."""
        if self.epoch != top.epoch:
            self.epoch, self.offset = top.epoch, top.offset
        else:
            self.offset = max(self.offset, top.offset)
        self.synced = True

    def link_lost(self) -> None:
        """The link dropped: whatever was published until it is back must be read from history."""
        self.gapped, self.seen, self.seen_fresh = True, None, False

    def read_request(self) -> tuple[str | None, int]:
        """Start a history read; returns the position to read after (pass it to :meth:`on_history`)."""
        self.seen_fresh = False
        return self.epoch, self.offset

    def on_history(self, request: tuple[str | None, int], page: HistoryPage, *, limit: int) -> Repair:
        """Take a history page read after ``request`` (at most ``limit`` publications, oldest first).

        Returns:
            what to hand on, in order, and whether to read again.
        """
        if not self.gapped:
            return Repair()
        if (self.epoch, self.offset) != request:
            return Repair(again=True)  # moved meanwhile: read again from where it is now
        new_epoch = page.top.epoch != self.epoch
        if new_epoch:
            self.epoch, self.offset = page.top.epoch, 0
            if request[1] != 0:
                return Repair(again=True, new_epoch=True)  # read the new life from its first offset
        publications, lost = [], []
        for publication in page.publications:
            offset = publication.offset
            assert offset is not None  # history holds no ephemeral publication
            if offset <= self.offset:
                continue
            if offset != self.offset + 1:
                lost.append((self.offset + 1, offset - 1))
            self.offset = offset
            publications.append(publication)
        if (page.more or len(page.publications) >= limit) and self.offset < page.top.offset:
            # The page stopped at its limit (count or bytes): read on from where it stopped.
            return Repair(publications, lost, again=True, new_epoch=new_epoch)
        if self.offset < page.top.offset:
            lost.append((self.offset + 1, page.top.offset))
            self.offset = page.top.offset
        seen = self.seen
        if seen is not None and self.seen_fresh and (seen[0] != self.epoch or seen[1] > self.offset):
            return Repair(publications, lost, again=True, new_epoch=new_epoch)  # live went past this read
        self.gapped, self.seen, self.seen_fresh = False, None, False
        return Repair(publications, lost, new_epoch=new_epoch)
