"""Commands on a Redis Cluster: each sent to the primary serving its key, pipelined per primary.

redis-py's asyncio ``RedisCluster`` routes commands too, but awaits a round trip per command and
refuses scripts in pipelines; the backplane's publish path needs the per-node pipelining of
pipeline.py (DESIGN.md "Performance shape"), so it keeps one CommandPipeline per shard primary and
routes here. Redirects:

* ``MOVED``: the slot lives elsewhere now; the map learns it, a full refresh is asked for, and the
  command is sent to the new owner (it did not run where it was refused).
* ``ASK``: the slot is being migrated and this key already moved; the command is sent once to the
  target, preceded by ``ASKING``.

``TRYAGAIN`` and ``CLUSTERDOWN`` are temporary (BackplaneUnavailable, a retryable error for clients).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import AskError, MovedError
from redis.typing import EncodableT

from tidings.server.cluster.backplane import BackplaneUnavailable
from tidings.server.cluster.backplane.pipeline import CommandPipeline, Script
from tidings.server.cluster.backplane.slots import SlotMap
from tidings.server.cluster.redis_target import Address

__all__ = ["ClusterCommands"]

_MAX_REDIRECTS = 5

Run = Callable[[CommandPipeline, bool], Awaitable[Any]]


class ClusterCommands:
    """The ``Commands`` of pipeline.py over a cluster: routed by key, in order per channel.

    Guarantees: commands for one key keep the order they were called in (one pipeline per primary,
    and a key has one primary at a time); errors as CommandPipeline's, redirects followed.

    Args:
        slots: the slot map.
        new_pipeline: a CommandPipeline to a primary's address.
        on_moved: asks for the slot map to be read again (a MOVED reply).
    """

    def __init__(
        self,
        slots: SlotMap,
        new_pipeline: Callable[[Address], CommandPipeline],
        on_moved: Callable[[], None],
    ) -> None:
        self._slots = slots
        self._new_pipeline = new_pipeline
        self._on_moved = on_moved
        self._pipelines: dict[Address, CommandPipeline] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _pipeline(self, address: Address) -> CommandPipeline:
        pipeline = self._pipelines.get(address)
        if pipeline is None:
            pipeline = self._pipelines[address] = self._new_pipeline(address)
        return pipeline

    async def call(self, *args: EncodableT) -> Any:
        def run(pipeline: CommandPipeline, asking: bool) -> Awaitable[Any]:
            return pipeline.call_asking(*args) if asking else pipeline.call(*args)

        return await self._route(str(args[1]), run)

    async def call_all(self, commands: Sequence[tuple[EncodableT, ...]]) -> list[Any]:
        # Each routed (and redirected) on its own: they may live on different shards.
        return list(await asyncio.gather(*(self.call(*command) for command in commands)))

    async def evalsha(self, script: Script, keys: list[str], args: list[EncodableT]) -> Any:
        def run(pipeline: CommandPipeline, asking: bool) -> Awaitable[Any]:
            return pipeline.evalsha(script, keys, args, asking=asking)

        return await self._route(keys[0], run)

    async def _route(self, key: str, run: Run) -> Any:
        address, asking = self._slots.owner(key), False
        for _ in range(_MAX_REDIRECTS):
            try:
                return await run(self._pipeline(address), asking)
            except AskError as exc:  # MovedError is one too
                address = (str(exc.host), int(exc.port))
                asking = not isinstance(exc, MovedError)
                if not asking:
                    self._slots.learn(exc.slot_id, address)
                    self._on_moved()
        raise BackplaneUnavailable(f"Redis Cluster redirected a command {_MAX_REDIRECTS} times")

    def prune(self, primaries: frozenset[Address]) -> None:
        """Close the pipelines of servers that are no longer primaries (in the background)."""
        for address in [a for a in self._pipelines if a not in primaries]:
            task = asyncio.get_running_loop().create_task(self._pipelines.pop(address).close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        pipelines, self._pipelines = list(self._pipelines.values()), {}
        for pipeline in pipelines:
            await pipeline.close()
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task
