"""Fan-out accounting (pure): who was owed each publication, who received it, on which node.

The model needs no coordination between the processes that publish and those that
receive, so every locust worker keeps its own :class:`Ledger` and the master merges
them (:func:`verify`):

* A channel publication is known by ``(channel, epoch, offset)``. Its publisher
  records it with the node it published through and the time the publish reply
  arrived (``acked_ts``).
* A subscription records the offset it starts after (the subscribe reply's offset),
  the node serving each stretch of offsets (a reconnect with ``since`` opens a new
  segment), and every offset it received, per receiving node.
* A subscription is owed every publication of its channel and epoch with an offset
  above its start, acknowledged at least ``drain`` seconds before the subscription
  ended (it stopped listening, or the ledgers were snapshotted). Later ones may still
  be in flight: they are counted as ``unverified``, never as lost.
* Notifications carry no offset: each has a key chosen by its sender (in its
  ``data``). An inbox (one user's connection) is owed a notification addressed to
  its user, or to a topic it subscribed to, sent after the inbox was ready and
  acknowledged ``drain`` seconds before it ended.

The verdict counts, per (publisher node, receiver node) pair, what was expected,
delivered, lost and duplicated. DESIGN.md guarantee 1 ("every subscriber of that
channel on every node, in offset order, exactly once per connection") is what it
checks: a run passes only with something verified, no loss, no duplicate, no
reordering and no problem reported.

Everything here is plain data: :meth:`Ledger.encode` gives JSON- and
MessagePack-safe dicts for locust's messages between workers and the master.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Inbox",
    "Ledger",
    "NotificationRecord",
    "PairStats",
    "PublicationRecord",
    "RangeSet",
    "Subscription",
    "Verdict",
    "verify",
]

UNKNOWN_NODE = "?"


class RangeSet:
    """A set of integers stored as sorted, disjoint, inclusive ranges (offsets arrive mostly in order)."""

    __slots__ = ("_his", "_los")

    def __init__(self) -> None:
        self._los: list[int] = []
        self._his: list[int] = []

    def add(self, value: int) -> bool:
        """Add ``value``; False if it was already there."""
        los, his = self._los, self._his
        if his and value == his[-1] + 1:  # the common case: the next offset
            his[-1] = value
            return True
        i = bisect.bisect_right(los, value) - 1
        if i >= 0 and value <= his[i]:
            return False
        joins_left = i >= 0 and his[i] + 1 == value
        joins_right = i + 1 < len(los) and los[i + 1] - 1 == value
        if joins_left and joins_right:
            his[i] = his[i + 1]
            del los[i + 1], his[i + 1]
        elif joins_left:
            his[i] = value
        elif joins_right:
            los[i + 1] = value
        else:
            los.insert(i + 1, value)
            his.insert(i + 1, value)
        return True

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        i = bisect.bisect_right(self._los, value) - 1
        return i >= 0 and value <= self._his[i]

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in zip(self._los, self._his, strict=True))

    def ranges(self) -> Iterator[tuple[int, int]]:
        return zip(self._los, self._his, strict=True)

    def encode(self) -> list[int]:
        """Flat ``[lo1, hi1, lo2, hi2, ...]``."""
        flat: list[int] = []
        for lo, hi in self.ranges():
            flat += (lo, hi)
        return flat

    @classmethod
    def decode(cls, flat: list[int]) -> RangeSet:
        """The inverse of :meth:`encode` (ranges sorted and disjoint)."""
        result = cls()
        for lo, hi in zip(flat[::2], flat[1::2], strict=True):
            if result._his and lo <= result._his[-1] + 1:
                result._his[-1] = max(result._his[-1], hi)
            else:
                result._los.append(lo)
                result._his.append(hi)
        return result

    def __repr__(self) -> str:
        return f"RangeSet({list(self.ranges())!r})"


@dataclass(slots=True)
class PublicationRecord:
    """One acknowledged channel publication."""

    channel: str
    epoch: str
    offset: int
    node: str  # the node the publisher was connected to (or posted through)
    sent_ts: float
    acked_ts: float

    def encode(self) -> list[Any]:
        return [self.channel, self.epoch, self.offset, self.node, self.sent_ts, self.acked_ts]

    @classmethod
    def decode(cls, row: list[Any]) -> PublicationRecord:
        return cls(str(row[0]), str(row[1]), int(row[2]), str(row[3]), float(row[4]), float(row[5]))


@dataclass(slots=True)
class Subscription:
    """One connection's subscription to one channel, across reconnects.

    ``segments`` lists ``(after_offset, node)``: offsets above ``after_offset`` (up to the
    next segment's) were the business of ``node``. The first segment starts at ``start``.
    """

    channel: str
    epoch: str
    start: int
    node: str
    segments: list[tuple[int, str]] = field(default_factory=list)
    received: dict[str, RangeSet] = field(default_factory=dict)
    duplicates: dict[tuple[int, str], int] = field(default_factory=dict)
    reordered: int = 0
    highest: int = 0
    foreign_epoch: int = 0  # receipts from another epoch (the stream was lost)
    end_ts: float | None = None

    def __post_init__(self) -> None:
        if not self.segments:
            self.segments = [(self.start, self.node)]
        self.highest = max(self.highest, self.start)

    def receive(self, epoch: str, offset: int, node: str) -> bool:
        """Record one publication received on ``node``; False when it is a duplicate.

        An offset at or below the start is a duplicate too: the subscribe reply said it
        came before this subscription (DESIGN.md guarantee 2: "no gap and no duplicate").
        """
        if epoch != self.epoch:
            self.foreign_epoch += 1
            return True
        if offset <= self.start or any(offset in seen for seen in self.received.values()):
            key = (offset, node)
            self.duplicates[key] = self.duplicates.get(key, 0) + 1
            return False
        if offset < self.highest:
            self.reordered += 1
        else:
            self.highest = offset
        seen = self.received.get(node)
        if seen is None:
            seen = self.received[node] = RangeSet()
        seen.add(offset)
        return True

    def resume(self, after_offset: int, node: str) -> None:
        """A reconnect subscribed again with ``since`` = ``after_offset`` on ``node``."""
        self.segments.append((after_offset, node))
        self.node = node

    def node_for(self, offset: int) -> str:
        """The node that owed this subscription ``offset``."""
        node = self.segments[0][1]
        for after, segment_node in self.segments:
            if offset > after:
                node = segment_node
        return node

    def encode(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "epoch": self.epoch,
            "start": self.start,
            "node": self.node,
            "segments": [list(s) for s in self.segments],
            "received": {node: seen.encode() for node, seen in self.received.items()},
            "duplicates": [[offset, node, n] for (offset, node), n in self.duplicates.items()],
            "reordered": self.reordered,
            "highest": self.highest,
            "foreign_epoch": self.foreign_epoch,
            "end_ts": self.end_ts,
        }

    @classmethod
    def decode(cls, data: dict[str, Any]) -> Subscription:
        return cls(
            channel=data["channel"],
            epoch=data["epoch"],
            start=int(data["start"]),
            node=data["node"],
            segments=[(int(a), str(n)) for a, n in data["segments"]],
            received={node: RangeSet.decode(flat) for node, flat in data["received"].items()},
            duplicates={(int(o), str(n)): int(c) for o, n, c in data["duplicates"]},
            reordered=int(data["reordered"]),
            highest=int(data["highest"]),
            foreign_epoch=int(data.get("foreign_epoch", 0)),
            end_ts=data["end_ts"],
        )


@dataclass(slots=True)
class NotificationRecord:
    """One notification a backend sent: to ``users``, or to every subscriber of ``topic``."""

    key: str
    users: tuple[str, ...]
    topic: str | None
    node: str
    sent_ts: float
    acked_ts: float

    def encode(self) -> list[Any]:
        return [self.key, list(self.users), self.topic, self.node, self.sent_ts, self.acked_ts]

    @classmethod
    def decode(cls, row: list[Any]) -> NotificationRecord:
        return cls(str(row[0]), tuple(row[1]), row[2], str(row[3]), float(row[4]), float(row[5]))


@dataclass(slots=True)
class Inbox:
    """One user's connection, listening for notifications from ``start_ts`` on.

    ``segments`` lists ``(since_ts, node)``: the node it was connected to from that time on.
    """

    user: str
    node: str
    start_ts: float
    topics: set[str] = field(default_factory=set)
    segments: list[tuple[float, str]] = field(default_factory=list)
    received: dict[str, list[str]] = field(default_factory=dict)  # key -> receiving node per receipt
    end_ts: float | None = None

    def __post_init__(self) -> None:
        if not self.segments:
            self.segments = [(self.start_ts, self.node)]

    def receive(self, key: str, node: str) -> bool:
        """Record one notification received on ``node``; False when it is a duplicate."""
        nodes = self.received.setdefault(key, [])
        nodes.append(node)
        return len(nodes) == 1

    def node_at(self, ts: float) -> str:
        node = self.segments[0][1]
        for since, segment_node in self.segments:
            if ts >= since:
                node = segment_node
        return node

    def encode(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "node": self.node,
            "start_ts": self.start_ts,
            "topics": sorted(self.topics),
            "segments": [list(s) for s in self.segments],
            "received": self.received,
            "end_ts": self.end_ts,
        }

    @classmethod
    def decode(cls, data: dict[str, Any]) -> Inbox:
        return cls(
            user=data["user"],
            node=data["node"],
            start_ts=float(data["start_ts"]),
            topics=set(data["topics"]),
            segments=[(float(t), str(n)) for t, n in data["segments"]],
            received={str(k): [str(n) for n in v] for k, v in data["received"].items()},
            end_ts=data["end_ts"],
        )


@dataclass
class Ledger:
    """What one process saw. ``snapshot_ts`` is set by :meth:`encode` (the moment it was taken)."""

    publications: list[PublicationRecord] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)
    notifications: list[NotificationRecord] = field(default_factory=list)
    inboxes: list[Inbox] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    snapshot_ts: float | None = None

    def problem(self, message: str) -> None:
        """Report something that makes the run fail; each distinct message is kept once."""
        if message not in self.problems:
            self.problems.append(message)

    def encode(self, now: float) -> dict[str, Any]:
        """A snapshot at ``now``: subscriptions still open end at ``now``."""
        return {
            "snapshot_ts": now,
            "publications": [p.encode() for p in self.publications],
            "subscriptions": [s.encode() for s in self.subscriptions],
            "notifications": [n.encode() for n in self.notifications],
            "inboxes": [i.encode() for i in self.inboxes],
            "problems": list(self.problems),
        }

    @classmethod
    def decode(cls, data: dict[str, Any]) -> Ledger:
        return cls(
            publications=[PublicationRecord.decode(r) for r in data["publications"]],
            subscriptions=[Subscription.decode(s) for s in data["subscriptions"]],
            notifications=[NotificationRecord.decode(r) for r in data["notifications"]],
            inboxes=[Inbox.decode(i) for i in data["inboxes"]],
            problems=list(data["problems"]),
            snapshot_ts=data["snapshot_ts"],
        )


# --- verdict ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PairStats:
    """Deliveries from publications made through one node to receivers on another (or the same)."""

    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0

    def encode(self) -> dict[str, int]:
        return {
            "expected": self.expected,
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicates": self.duplicates,
        }


@dataclass
class Verdict:
    """The fan-out check of a whole run."""

    pairs: dict[tuple[str, str], PairStats] = field(default_factory=dict)
    reordered: int = 0
    unverified: int = 0  # (owed delivery, publication) checks skipped: too close to the end
    unaccounted: int = 0  # receipts of publications nobody recorded (e.g. the publisher stopped first)
    publications: int = 0
    subscriptions: int = 0
    notifications: int = 0
    inboxes: int = 0
    problems: list[str] = field(default_factory=list)

    def pair(self, publisher: str, receiver: str) -> PairStats:
        stats = self.pairs.get((publisher, receiver))
        if stats is None:
            stats = self.pairs[publisher, receiver] = PairStats()
        return stats

    def total(self) -> PairStats:
        total = PairStats()
        for stats in self.pairs.values():
            total.expected += stats.expected
            total.delivered += stats.delivered
            total.lost += stats.lost
            total.duplicates += stats.duplicates
        return total

    @property
    def ok(self) -> bool:
        """Something was verified, and nothing was lost, duplicated, reordered or reported as a problem."""
        total = self.total()
        return (
            total.expected > 0
            and total.lost == 0
            and total.duplicates == 0
            and not self.reordered
            and not (self.problems)
        )

    def failures(self) -> list[str]:
        """Why the run fails, one line per reason (empty when it passes)."""
        total = self.total()
        reasons = list(self.problems)
        if total.expected == 0:
            reasons.append("nothing was verified: no subscription was owed any publication")
        if total.lost:
            reasons.append(f"{total.lost} deliveries lost")
        if total.duplicates:
            reasons.append(f"{total.duplicates} duplicate deliveries")
        if self.reordered:
            reasons.append(f"{self.reordered} deliveries out of offset order")
        return reasons

    def nodes(self) -> list[str]:
        return sorted({node for pair in self.pairs for node in pair})

    def encode(self) -> dict[str, Any]:
        total = self.total()
        return {
            "ok": self.ok,
            "failures": self.failures(),
            "expected": total.expected,
            "delivered": total.delivered,
            "lost": total.lost,
            "duplicates": total.duplicates,
            "reordered": self.reordered,
            "unverified": self.unverified,
            "unaccounted": self.unaccounted,
            "publications": self.publications,
            "subscriptions": self.subscriptions,
            "notifications": self.notifications,
            "inboxes": self.inboxes,
            "pairs": [
                {"publisher": p, "receiver": r, **stats.encode()}
                for (p, r), stats in sorted(self.pairs.items())
            ],
        }

    def table(self) -> str:
        """A human table: one row per node pair, nodes abbreviated n1, n2, ... with a legend."""
        labels = {node: f"n{i + 1}" for i, node in enumerate(self.nodes())}
        lines = [
            f"{'publisher':>10} -> {'receiver':<9} {'expected':>10} {'delivered':>10} {'lost':>7} {'dups':>7}"
        ]
        for (publisher, receiver), s in sorted(self.pairs.items()):
            lines.append(
                f"{labels[publisher]:>10} -> {labels[receiver]:<9} {s.expected:>10} {s.delivered:>10} "
                f"{s.lost:>7} {s.duplicates:>7}"
            )
        t = self.total()
        lines.append(f"{'total':>23} {t.expected:>10} {t.delivered:>10} {t.lost:>7} {t.duplicates:>7}")
        lines.append(
            f"reordered {self.reordered}, unverified (too close to the end) {self.unverified}, "
            f"unaccounted receipts {self.unaccounted}"
        )
        lines += [f"  {label} = {node}" for node, label in labels.items()]
        lines.append(
            "PASS: every owed delivery arrived once, in order"
            if self.ok
            else "FAIL: " + "; ".join(self.failures())
        )
        return "\n".join(lines)


def verify(ledgers: Iterable[Ledger], *, drain: float) -> Verdict:
    """Check every subscription and inbox of ``ledgers`` against every publication and notification.

    Args:
        ledgers: the snapshots of every process of the run.
        drain: seconds a delivery may take; publications acknowledged later than
            ``drain`` before a receiver ended are not owed to it (``unverified``).

    Returns:
        The verdict, with counts per (publisher node, receiver node) pair.
    """
    ledgers = list(ledgers)
    verdict = Verdict()
    # Every process recorded everything it acknowledged up to its own snapshot, so up to the earliest
    # snapshot every ledger is complete: nothing later can be owed.
    snapshots = [ledger.snapshot_ts for ledger in ledgers if ledger.snapshot_ts is not None]
    cutoff = min(snapshots) if snapshots else float("inf")
    for ledger in ledgers:
        verdict.problems += [p for p in ledger.problems if p not in verdict.problems]
    _verify_channels(ledgers, drain, cutoff, verdict)
    _verify_notifications(ledgers, drain, cutoff, verdict)
    return verdict


def _verify_channels(ledgers: list[Ledger], drain: float, cutoff: float, verdict: Verdict) -> None:
    streams: dict[tuple[str, str], dict[int, PublicationRecord]] = {}
    for ledger in ledgers:
        for record in ledger.publications:
            streams.setdefault((record.channel, record.epoch), {})[record.offset] = record
            verdict.publications += 1
    ordered = {key: sorted(records.values(), key=lambda r: r.offset) for key, records in streams.items()}
    offsets = {key: [r.offset for r in records] for key, records in ordered.items()}
    foreign = 0
    for ledger in ledgers:
        for sub in ledger.subscriptions:
            verdict.subscriptions += 1
            verdict.reordered += sub.reordered
            foreign += sub.foreign_epoch
            end = min(sub.end_ts if sub.end_ts is not None else cutoff, cutoff)
            key = (sub.channel, sub.epoch)
            records = ordered.get(key, [])
            known = streams.get(key, {})
            for i in range(bisect.bisect_right(offsets.get(key, []), sub.start), len(records)):
                record = records[i]
                if record.acked_ts + drain > end:
                    verdict.unverified += 1
                    continue
                receiver = next((n for n, seen in sub.received.items() if record.offset in seen), None)
                if receiver is None:
                    verdict.pair(record.node, sub.node_for(record.offset)).lost += 1
                    verdict.pair(record.node, sub.node_for(record.offset)).expected += 1
                else:
                    stats = verdict.pair(record.node, receiver)
                    stats.expected += 1
                    stats.delivered += 1
            for seen in sub.received.values():
                for lo, hi in seen.ranges():
                    verdict.unaccounted += sum(1 for offset in range(lo, hi + 1) if offset not in known)
            for (offset, node), count in sub.duplicates.items():
                publisher = known[offset].node if offset in known else UNKNOWN_NODE
                verdict.pair(publisher, node).duplicates += count
    if foreign:
        verdict.problems.append(
            f"{foreign} publications arrived from another epoch (a channel's stream was lost)"
        )


def _verify_notifications(ledgers: list[Ledger], drain: float, cutoff: float, verdict: Verdict) -> None:
    records = {n.key: n for ledger in ledgers for n in ledger.notifications}
    verdict.notifications = len(records)
    by_user: dict[str, list[NotificationRecord]] = {}
    by_topic: dict[str, list[NotificationRecord]] = {}
    for record in records.values():
        for user in record.users:
            by_user.setdefault(user, []).append(record)
        if record.topic is not None:
            by_topic.setdefault(record.topic, []).append(record)
    for ledger in ledgers:
        for inbox in ledger.inboxes:
            verdict.inboxes += 1
            end = min(inbox.end_ts if inbox.end_ts is not None else cutoff, cutoff)
            owed = {r.key: r for r in by_user.get(inbox.user, [])}
            for topic in inbox.topics:
                owed.update((r.key, r) for r in by_topic.get(topic, []))
            for record in owed.values():
                if record.sent_ts < inbox.start_ts:
                    continue  # sent before this inbox listened: it waits in the stored inbox instead
                if record.acked_ts + drain > end:
                    verdict.unverified += 1
                    continue
                nodes = inbox.received.get(record.key)
                if not nodes:
                    stats = verdict.pair(record.node, inbox.node_at(record.acked_ts))
                    stats.expected += 1
                    stats.lost += 1
                else:
                    stats = verdict.pair(record.node, nodes[0])
                    stats.expected += 1
                    stats.delivered += 1
            for key, nodes in inbox.received.items():
                sent = records.get(key)
                if sent is None:
                    verdict.unaccounted += len(nodes)
                    continue
                for node in nodes[1:]:
                    verdict.pair(sent.node, node).duplicates += 1
