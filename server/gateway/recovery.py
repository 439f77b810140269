"""The recovery rule (pure): can a client that last saw ``since`` be brought up to date?

A client that reconnects sends the position of the last publication it saw. It
is recovered when the channel's stream is the same life (same epoch) and the
history still holds every publication after that position; then it gets exactly
those. Otherwise the answer is "not recovered" and the client reloads (DESIGN.md,
Guarantee 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from tidings.server.gateway.protocol import StreamPosition

__all__ = ["Recovery", "recover"]


class _Positioned(Protocol):
    @property
    def offset(self) -> int | None: ...


P = TypeVar("P", bound=_Positioned)


@dataclass(frozen=True, slots=True)
class Recovery(Generic[P]):
    recovered: bool
    publications: list[P]


def recover(
    since: StreamPosition, top: StreamPosition, publications: Sequence[P], *, limit: int
) -> Recovery[P]:
    """Decide recovery.

    Args:
        since: the client's last seen position.
        top: the channel's position when ``publications`` were read.
        publications: history after ``since.offset``, oldest first, at most ``limit``.
        limit: how many publications the caller asked for.

    Returns:
        ``recovered`` True with the missed publications when they are complete and
        contiguous; ``recovered`` False (with what there is) when the epoch changed,
        the client claims a future offset, the window was exceeded, or the gap is
        larger than ``limit``.
    """
    if since.epoch != top.epoch or since.offset > top.offset:
        return Recovery(False, [])
    missed = top.offset - since.offset
    if missed == 0:
        return Recovery(True, [])
    if missed > limit or len(publications) != missed:
        return Recovery(False, list(publications))
    expected = since.offset + 1
    for publication in publications:
        if publication.offset != expected:
            return Recovery(False, list(publications))
        expected += 1
    return Recovery(True, list(publications))
