"""What a pub/sub link (link.py) knows of each channel it carries, and how long it waits and retries."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from tidings.server.cluster.backplane.tracking import OffsetTracker

__all__ = ["ChannelState", "LinkTiming"]


@dataclass(slots=True, eq=False)
class ChannelState:
    """What this link knows of one channel it subscribes (or is subscribing) to."""

    wanted: bool = True  # the hub wants it; False: an UNSUBSCRIBE is queued
    sent: bool = False  # SUBSCRIBE written on the current connection
    confirmed: bool = False  # Redis confirmed SUBSCRIBE on the current connection: publications flow
    failed: bool = False  # the subscription was given up (link lost before it was synced)
    changed: asyncio.Event | None = field(default_factory=asyncio.Event)  # wakes subscribe() until synced
    track: OffsetTracker = field(default_factory=OffsetTracker)

    @property
    def synced(self) -> bool:
        return self.track.synced


@dataclass(frozen=True, slots=True)
class LinkTiming:
    """How long Redis may take, and how the link retries (seconds; see RedisBackplane)."""

    socket_timeout: float
    connect_timeout: float
    health_interval: float
    min_backoff: float
    max_backoff: float

    def backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter: spreads a herd of nodes after a Redis restart."""
        ceiling = min(self.max_backoff, self.min_backoff * 2 ** min(attempt, 30))
        return random.uniform(ceiling / 2, ceiling)
