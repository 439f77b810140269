"""InMemoryBackplane: one node, no Redis. History is bounded by size and TTL per namespace."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tidings.server.channels import namespace_of
from tidings.server.cluster.backplane import (
    HISTORY_OVERHEAD,
    HistoryPage,
    HistoryPolicy,
    Publication,
    PublicationHandler,
    Sender,
    StreamPosition,
    kind_of,
)

__all__ = ["InMemoryBackplane"]


@dataclass(slots=True)
class _Stream:
    epoch: str
    offset: int = 0
    publications: deque[Publication] = field(default_factory=deque)
    last_publish: float = 0.0


class InMemoryBackplane:
    """The Backplane contract within one process.

    Publications reach the handler synchronously inside ``publish``, so the live
    order is the history order trivially. Only channels passed to ``subscribe``
    are handed on, as with Redis.
    """

    def __init__(
        self,
        *,
        node_id: str = "memory",
        policies: Mapping[str, HistoryPolicy] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self._policies = dict(policies or {})
        self._default_policy = self._policies.get("", HistoryPolicy())
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._subscribed: set[str] = set()
        self._handler: PublicationHandler | None = None

    async def start(self, handler: PublicationHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None

    @property
    def ready(self) -> bool:
        return True

    def _policy(self, channel: str) -> HistoryPolicy:
        return self._policies.get(namespace_of(channel), self._default_policy)

    def _stream(self, channel: str) -> _Stream:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = _Stream(epoch=secrets.token_hex(4))
        self._expire(channel, stream)
        return stream

    def _expire(self, channel: str, stream: _Stream) -> None:
        # Like a Redis stream key with a TTL: after ``ttl`` without publications the history is gone,
        # but the offset survives so that clients see "not recovered" rather than a reused offset.
        if stream.publications and self._clock() - stream.last_publish > self._policy(channel).ttl:
            stream.publications.clear()

    async def publish(
        self, channel: str, data: Any, *, sender: Sender | None = None, ephemeral: bool = False
    ) -> StreamPosition | None:
        now = self._clock()
        if ephemeral:
            kind = kind_of(channel, None, sender, data)
            publication = Publication(channel, "", None, data, sender, int(now * 1000), kind)
            position = None
        else:
            stream = self._stream(channel)
            stream.offset += 1
            stream.last_publish = now
            kind = kind_of(channel, stream.offset, sender, data)
            publication = Publication(
                channel, stream.epoch, stream.offset, data, sender, int(now * 1000), kind
            )
            stream.publications.append(publication)
            while len(stream.publications) > self._policy(channel).size:
                stream.publications.popleft()
            position = StreamPosition(stream.epoch, stream.offset)
        if self._handler is not None and channel in self._subscribed:
            self._handler(publication)
        return position

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

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
        stream = self._streams.get(channel)
        if stream is None:  # a read creates nothing, as with Redis
            return HistoryPage(StreamPosition("", 0), [])
        self._expire(channel, stream)
        after = since.offset if since is not None else 0
        upper = before if before is not None else math.inf
        selected = [p for p in stream.publications if p.offset is not None and after < p.offset < upper]
        if reverse:
            selected.reverse()
        page: list[Publication] = []
        size = 0
        for publication in selected[:limit]:
            # The measure of history.lua: the payload (here its JSON) plus a fixed overhead.
            cost = len(json.dumps(publication.data, ensure_ascii=False).encode()) + HISTORY_OVERHEAD
            if max_bytes and page and size + cost > max_bytes:
                break
            size += cost
            page.append(publication)
        more = len(page) < len(selected)
        return HistoryPage(StreamPosition(stream.epoch, stream.offset), page, more=more, size=size)

    async def top(self, channel: str) -> StreamPosition:
        stream = self._stream(channel)
        return StreamPosition(stream.epoch, stream.offset)

    def position(self, channel: str) -> StreamPosition | None:
        return None  # top() costs nothing here
