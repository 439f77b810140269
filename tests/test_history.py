"""The recovery rule (pure): exactly the missed publications, or "not recovered"."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.server.gateway.protocol import StreamPosition
from tidings.server.gateway.recovery import recover


@dataclass(frozen=True)
class Pub:
    offset: int | None


def pubs(*offsets: int) -> list[Pub]:
    return [Pub(offset) for offset in offsets]


TOP = StreamPosition("e1", 10)


@pytest.mark.parametrize(
    ("since", "publications", "limit", "recovered", "offsets"),
    [
        pytest.param(StreamPosition("e1", 10), [], 100, True, [], id="nothing-missed"),
        pytest.param(StreamPosition("e1", 7), pubs(8, 9, 10), 100, True, [8, 9, 10], id="three-missed"),
        pytest.param(
            StreamPosition("e1", 0), pubs(*range(1, 11)), 100, True, list(range(1, 11)), id="from-the-start"
        ),
        pytest.param(StreamPosition("e1", 7), pubs(8, 9, 10), 3, True, [8, 9, 10], id="gap-equal-to-limit"),
        pytest.param(StreamPosition("e0", 7), pubs(8, 9, 10), 100, False, [], id="other-epoch"),
        pytest.param(StreamPosition("", 10), [], 100, False, [], id="empty-epoch"),
        pytest.param(StreamPosition("e1", 11), [], 100, False, [], id="position-beyond-top"),
        pytest.param(
            StreamPosition("e1", 2), pubs(6, 7, 8, 9, 10), 100, False, [6, 7, 8, 9, 10], id="window-exceeded"
        ),
        pytest.param(StreamPosition("e1", 5), pubs(6, 7, 8), 3, False, [6, 7, 8], id="gap-larger-than-limit"),
        pytest.param(StreamPosition("e1", 7), pubs(8, 10, 11), 100, False, [8, 10, 11], id="hole-in-history"),
        pytest.param(StreamPosition("e1", 7), pubs(9, 8, 10), 100, False, [9, 8, 10], id="out-of-order"),
        pytest.param(StreamPosition("e1", 7), pubs(8, 9), 100, False, [8, 9], id="history-shorter-than-top"),
    ],
)
def test_recover(
    since: StreamPosition, publications: list[Pub], limit: int, recovered: bool, offsets: list[int]
) -> None:
    """Recovered only with the same epoch and every publication after since, contiguous and within limit."""
    result = recover(since, TOP, publications, limit=limit)
    assert result.recovered is recovered
    assert [p.offset for p in result.publications] == offsets


@given(
    top=st.integers(0, 50),
    window=st.integers(0, 50),
    since=st.integers(0, 60),
    limit=st.integers(1, 60),
    same_epoch=st.booleans(),
)
def test_recovered_means_exactly_the_missed_publications(
    top: int, window: int, since: int, limit: int, same_epoch: bool
) -> None:
    """For any history window, recovered ⇔ the gap is fully retained; then the result is since+1..top in order."""
    oldest = max(1, top - window + 1)  # history keeps offsets oldest..top
    retained = [Pub(o) for o in range(max(oldest, since + 1), top + 1)][:limit]
    result = recover(
        StreamPosition("e" if same_epoch else "x", since), StreamPosition("e", top), retained, limit=limit
    )
    expected = (
        same_epoch and since <= top and (since == top or (since + 1 >= oldest and top - since <= limit))
    )
    assert result.recovered is expected
    if expected:
        assert [p.offset for p in result.publications] == list(range(since + 1, top + 1))
