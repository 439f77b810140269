"""The pure offset tracker behind RedisBackplane's gap repair: hand on, skip, or read the gap."""

from __future__ import annotations

import pytest

from tidings.server.cluster.backplane import HistoryPage, Publication, StreamPosition
from tidings.server.cluster.backplane.tracking import OffsetTracker, Verdict


def synced(epoch: str = "e1", offset: int = 0) -> OffsetTracker:
    tracker = OffsetTracker()
    tracker.settle(StreamPosition(epoch, offset))
    return tracker


def page(epoch: str, top: int, offsets: list[int]) -> HistoryPage:
    return HistoryPage(
        StreamPosition(epoch, top), [Publication("room:a", epoch, o, o, None, 0) for o in offsets]
    )


def test_before_the_baseline_live_messages_only_move_it() -> None:
    tracker = OffsetTracker()
    assert tracker.on_live("e1", 7) is Verdict.SKIP
    tracker.settle(StreamPosition("e1", 5))  # read before message 7 was published
    assert (tracker.epoch, tracker.offset, tracker.synced) == ("e1", 7, True)
    assert tracker.on_live("e1", 8) is Verdict.DELIVER


@pytest.mark.parametrize(
    ("offsets", "verdicts"),
    [
        ([1, 2, 3], ["deliver", "deliver", "deliver"]),
        ([1, 1, 2], ["deliver", "skip", "deliver"]),
        ([1, 3, 4], ["deliver", "read gap", "skip"]),
    ],
)
def test_live_messages(offsets: list[int], verdicts: list[str]) -> None:
    tracker = synced()
    assert [tracker.on_live("e1", o).value for o in offsets] == verdicts


def test_a_gap_is_closed_from_history_then_live_goes_on() -> None:
    tracker = synced(offset=1)
    assert tracker.on_live("e1", 4) is Verdict.READ_GAP
    request = tracker.read_request()
    assert request == ("e1", 1)
    repair = tracker.on_history(request, page("e1", 4, [2, 3, 4]), limit=100)
    assert [p.offset for p in repair.publications] == [2, 3, 4] and not repair.again and not repair.lost
    assert tracker.on_live("e1", 4) is Verdict.SKIP
    assert tracker.on_live("e1", 5) is Verdict.DELIVER


def test_live_messages_past_the_read_make_it_read_again() -> None:
    tracker = synced(offset=1)
    tracker.on_live("e1", 3)
    request = tracker.read_request()
    assert tracker.on_live("e1", 6) is Verdict.SKIP  # arrives while the read is on its way
    repair = tracker.on_history(request, page("e1", 4, [2, 3, 4]), limit=100)
    assert [p.offset for p in repair.publications] == [2, 3, 4] and repair.again
    repair = tracker.on_history(tracker.read_request(), page("e1", 6, [5, 6]), limit=100)
    assert [p.offset for p in repair.publications] == [5, 6] and not repair.again
    assert tracker.on_live("e1", 7) is Verdict.DELIVER


def test_a_full_page_is_followed_by_another_read() -> None:
    tracker = synced()
    tracker.link_lost()
    repair = tracker.on_history(tracker.read_request(), page("e1", 5, [1, 2]), limit=2)
    assert repair.again and tracker.offset == 2
    repair = tracker.on_history(tracker.read_request(), page("e1", 5, [3, 4, 5]), limit=3)
    assert not repair.again and tracker.offset == 5 and not tracker.gapped


def test_a_lost_link_with_nothing_missed_closes_at_once() -> None:
    tracker = synced(offset=3)
    tracker.link_lost()
    assert tracker.on_live("e1", 4) is Verdict.SKIP  # gapped until the history read says where it is
    repair = tracker.on_history(tracker.read_request(), page("e1", 3, []), limit=100)
    assert repair.publications == [] and not repair.again and not tracker.gapped


def test_offsets_that_left_history_are_reported_and_skipped() -> None:
    tracker = synced(offset=1)
    tracker.on_live("e1", 9)
    repair = tracker.on_history(tracker.read_request(), page("e1", 9, [6, 7, 8, 9]), limit=100)
    assert repair.lost == [(2, 5)] and [p.offset for p in repair.publications] == [6, 7, 8, 9]


def test_a_new_epoch_restarts_at_offset_zero() -> None:
    tracker = synced(offset=10)
    assert tracker.on_live("e2", 1) is Verdict.DELIVER
    assert (tracker.epoch, tracker.offset) == ("e2", 1)
    assert tracker.on_live("e3", 3) is Verdict.READ_GAP
    repair = tracker.on_history(tracker.read_request(), page("e3", 3, [1, 2, 3]), limit=100)
    assert [p.offset for p in repair.publications] == [1, 2, 3] and not repair.again


def test_a_history_page_of_a_new_epoch_is_read_again_from_its_start() -> None:
    tracker = synced(offset=10)
    tracker.link_lost()
    repair = tracker.on_history(tracker.read_request(), page("e2", 3, []), limit=100)
    assert repair.new_epoch and repair.again and (tracker.epoch, tracker.offset) == ("e2", 0)
    repair = tracker.on_history(tracker.read_request(), page("e2", 3, [1, 2, 3]), limit=100)
    assert [p.offset for p in repair.publications] == [1, 2, 3] and not repair.again


def test_a_stale_page_is_ignored() -> None:
    tracker = synced(offset=1)
    tracker.on_live("e1", 3)
    stale = tracker.read_request()
    repair = tracker.on_history(tracker.read_request(), page("e1", 3, [2, 3]), limit=100)
    assert [p.offset for p in repair.publications] == [2, 3]
    assert tracker.on_history(stale, page("e1", 3, [2, 3]), limit=100).publications == []
