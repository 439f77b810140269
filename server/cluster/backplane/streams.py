"""A channel's stream in Redis: the Lua publish and the bounded history read (one round trip each).

Per channel (all keys hash-tagged ``{channel}``, names in keys.py): a ``meta`` hash with
``epoch`` (one life of the stream) and ``offset`` (the top), and the ``stream`` itself, entry id
``<offset>-0``, trimmed with ``MAXLEN ~``. ``publish.lua`` bumps the offset, appends and
publishes in one step, so the live order is the history order (DESIGN.md, Guarantee 3);
``history.lua`` reads a page bounded by count and bytes and writes nothing unless asked to
give a new channel its epoch.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tidings.server.channels import namespace_of
from tidings.server.cluster.backplane import (
    HISTORY_OVERHEAD,
    HistoryPage,
    HistoryPolicy,
    Sender,
    StreamPosition,
)
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.backplane.envelope import (
    decode_publication,
    encode_payload,
    ephemeral_envelope,
    offset_of_entry_id,
)
from tidings.server.cluster.backplane.pipeline import SERVER_ID, Commands, Script

__all__ = ["ChannelStreams"]

PUBLISH_SCRIPT = Script(Path(__file__).with_name("publish.lua").read_text())
HISTORY_SCRIPT = Script(Path(__file__).with_name("history.lua").read_text())


class ChannelStreams:
    """Publishing to and reading from channel streams over pipelined commands.

    Guarantees: publishes whose coroutines first run in some order reach Redis in that order
    (the pipeline keeps it; on a cluster, per channel); errors raise BackplaneUnavailable
    (pipeline.py). ``sharded``: publish with SPUBLISH (Redis Cluster).
    """

    def __init__(
        self,
        pipeline: Commands,
        *,
        key_prefix: str,
        policies: Mapping[str, HistoryPolicy],
        sharded: bool = False,
    ) -> None:
        self._pipeline = pipeline
        self._publish_command = "SPUBLISH" if sharded else "PUBLISH"
        self._prefix = key_prefix
        self._policies = dict(policies)
        self._default_policy = self._policies.get("", HistoryPolicy())
        self._epoch_prefix = secrets.token_hex(3)
        self._epoch_counter = itertools.count(1)

    def _policy(self, channel: str) -> HistoryPolicy:
        return self._policies.get(namespace_of(channel), self._default_policy)

    def _new_epoch(self) -> str:
        return f"{self._epoch_prefix}{next(self._epoch_counter):x}"

    def _keys(self, channel: str) -> list[str]:
        return [
            redis_keys.channel_meta(self._prefix, channel),
            redis_keys.channel_stream(self._prefix, channel),
        ]

    async def publish(
        self, channel: str, data: Any, *, sender: Sender | None = None, ephemeral: bool = False
    ) -> StreamPosition | None:
        """Append and fan out (one script), or only fan out when ``ephemeral``; the new position."""
        payload = encode_payload(data, sender, int(time.time() * 1000))
        pubsub_name = redis_keys.channel_pubsub(self._prefix, channel)
        if ephemeral:
            await self._pipeline.call(self._publish_command, pubsub_name, ephemeral_envelope(payload))
            return None
        policy = self._policy(channel)
        epoch, offset = await self._pipeline.evalsha(
            PUBLISH_SCRIPT,
            self._keys(channel),
            [
                pubsub_name,
                payload,
                policy.size,
                _ttl_ms(policy),
                self._new_epoch(),
                self._publish_command,
                SERVER_ID,
            ],
        )
        return StreamPosition(epoch.decode(), int(offset))

    async def read(
        self,
        channel: str,
        *,
        after: int,
        limit: int,
        reverse: bool = False,
        before: int | None = None,
        max_bytes: int | None = None,
        create: bool = False,
    ) -> HistoryPage:
        """A history page (see ``Backplane.history``); ``create`` gives a channel without one its epoch."""
        policy = self._policy(channel)
        epoch_raw, top, entries, more = await self._pipeline.evalsha(
            HISTORY_SCRIPT,
            self._keys(channel),
            [
                self._new_epoch(),
                _ttl_ms(policy),
                after,
                limit,
                int(reverse),
                policy.size,
                max_bytes or 0,
                int(create),
                before or 0,
                SERVER_ID,
            ],
        )
        epoch = epoch_raw.decode()
        publications = []
        size = 0
        for entry_id, fields in entries:
            payload = _field(fields, b"p")
            size += len(payload) + HISTORY_OVERHEAD
            publications.append(decode_publication(channel, epoch, offset_of_entry_id(entry_id), payload))
        return HistoryPage(StreamPosition(epoch, int(top)), publications, more=bool(more), size=size)


def _ttl_ms(policy: HistoryPolicy) -> int:
    return max(1, int(policy.ttl * 1000))


def _field(fields: list[bytes], name: bytes) -> bytes:
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    raise ValueError(f"stream entry without field {name!r}")
