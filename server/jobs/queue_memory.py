"""Jobs within one process: the single-node :class:`~tidings.server.jobs.queue.JobQueue`."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tidings.server.jobs.queue import DEAD_LETTERS_KEPT, Job, JobCounts, new_job_id

__all__ = ["InMemoryJobQueue"]


@dataclass(slots=True)
class _Taken:
    job: Job
    consumer: str
    touched: float
    deliveries: int = 1


class InMemoryJobQueue:
    """The JobQueue contract within one process (single node, and tests)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ready: deque[Job] = deque()
        self._taken: dict[str, _Taken] = {}
        self._delayed: list[tuple[float, int, Job]] = []
        self._dead: deque[Job] = deque(maxlen=DEAD_LETTERS_KEPT)
        self._counters: Counter[str] = Counter()
        self._progress: dict[str, str] = {}
        self._entries = itertools.count(1)
        self._wakeup = asyncio.Event()

    def _push(self, job: Job) -> None:
        self._ready.append(replace(job, entry=f"{next(self._entries)}-0"))
        self._wakeup.set()

    async def enqueue(self, kind: str, payload: dict[str, Any], *, run_at: float | None = None) -> str:
        job = Job(new_job_id(), kind, payload, 0, self._clock())
        self._counters["enqueued"] += 1
        if run_at is not None and run_at > self._clock():
            heapq.heappush(self._delayed, (run_at, next(self._entries), job))
        else:
            self._push(job)
        return job.id

    async def take(self, consumer: str, count: int, *, block: float) -> list[Job]:
        if not self._ready:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), block)
        jobs: list[Job] = []
        while self._ready and len(jobs) < count:
            job = self._ready.popleft()
            self._taken[job.entry] = _Taken(job, consumer, self._clock())
            jobs.append(job)
        return jobs

    async def reclaim(self, consumer: str, *, min_idle: float, count: int, max_deliveries: int) -> list[Job]:
        now = self._clock()
        jobs: list[Job] = []
        for entry, taken in list(self._taken.items()):
            if len(jobs) >= count:
                break
            if now - taken.touched < min_idle:
                continue
            taken.deliveries += 1
            if taken.deliveries > max_deliveries:
                del self._taken[entry]
                self._bury(taken.job, f"lost {taken.deliveries - 1} times (its node died or stalled)")
                continue
            taken.consumer, taken.touched = consumer, now
            jobs.append(taken.job)
        return jobs

    async def touch(self, job: Job, consumer: str) -> bool:
        taken = self._taken.get(job.entry)
        if taken is None or taken.consumer != consumer:
            return False
        taken.touched = self._clock()
        return True

    async def complete(self, job: Job) -> bool:
        if self._taken.pop(job.entry, None) is None:
            return False
        self._counters["done"] += 1
        self._progress.pop(job.id, None)
        return True

    async def retry(self, job: Job, error: str, *, run_at: float) -> bool:
        if self._taken.pop(job.entry, None) is None:
            return False
        self._counters["failed"] += 1
        again = replace(job, attempts=job.attempts + 1, entry="", error=None)
        heapq.heappush(self._delayed, (run_at, next(self._entries), again))
        return True

    async def bury(self, job: Job, error: str) -> bool:
        if self._taken.pop(job.entry, None) is None:
            return False
        self._bury(job, error)
        return True

    def _bury(self, job: Job, error: str) -> None:
        self._counters["failed"] += 1
        self._counters["dead"] += 1
        self._progress.pop(job.id, None)
        self._dead.append(replace(job, error=error))

    async def release(self, job: Job) -> bool:
        if self._taken.pop(job.entry, None) is None:
            return False
        self._push(job)
        return True

    async def promote(self) -> int:
        now, moved = self._clock(), 0
        while self._delayed and self._delayed[0][0] <= now:
            self._push(heapq.heappop(self._delayed)[2])
            moved += 1
        return moved

    async def counts(self) -> JobCounts:
        return JobCounts(
            pending=len(self._ready),
            running=len(self._taken),
            delayed=len(self._delayed),
            done=self._counters["done"],
            failed=self._counters["failed"],
            dead=self._counters["dead"],
        )

    async def dead_letters(self, limit: int = 100) -> list[Job]:
        return list(reversed(self._dead))[:limit]

    async def load_progress(self, job_id: str) -> str | None:
        return self._progress.get(job_id)

    async def save_progress(self, job_id: str, value: str) -> None:
        self._progress[job_id] = value
