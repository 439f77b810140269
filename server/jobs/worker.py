"""The job worker: takes jobs from the queue and runs them on this node.

A node with ``TIDINGS_JOBS=off`` runs no worker but may still enqueue. The queue
contract and its guarantees are in queue.py; the worker adds the retry policy
(exponential backoff with jitter, then the dead letters), keeps each running job
touched, and hands running jobs back when the node stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from tidings.server.cluster.lease import Lease, run_once_periodically
from tidings.server.errors import StoreUnavailable
from tidings.server.jobs.queue import Job, JobConsumer

__all__ = ["JobHandler", "JobWorker"]

logger = logging.getLogger("tidings.jobs")

JobHandler = Callable[[Job], Awaitable[None]]
"""Runs one job; raising means the run failed (it is retried, then dead-lettered). Must be idempotent."""


@dataclass
class _WorkerStats:
    done: int = 0
    failed: int = 0
    lost: int = 0  # runs abandoned because another node took the job over


@dataclass
class JobWorker:
    """Takes jobs from ``queue`` and runs them on this node, ``concurrency`` at a time.

    Guarantees:
      * a job runs on this node only while this node holds it: the worker touches
        each running job every ``visibility_timeout / 3`` and cancels the run if
        the job was reclaimed by another node meanwhile;
      * a failed run is retried after ``retry_backoff * 2**(attempts-1)`` seconds
        (capped at ``max_backoff``, with jitter), and dead-lettered after
        ``max_attempts`` failed runs;
      * on ``stop`` running jobs are cancelled and given back, so another node
        takes them at once instead of after ``visibility_timeout``;
      * due delayed jobs are promoted every ``poll_interval`` by whichever node
        holds ``lease``.
    """

    queue: JobConsumer
    handlers: Mapping[str, JobHandler]
    consumer: str
    lease: Lease
    concurrency: int = 4
    visibility_timeout: float = 30.0
    max_attempts: int = 5
    retry_backoff: float = 1.0
    max_backoff: float = 300.0
    poll_interval: float = 0.25
    block_timeout: float = 1.0  # under the Redis client's socket timeout
    stats: _WorkerStats = field(default_factory=_WorkerStats)
    _running: dict[asyncio.Task[None], Job] = field(default_factory=dict, repr=False)
    _lost: set[str] = field(default_factory=set, repr=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)
    _stopping: bool = field(default=False, repr=False)

    @property
    def running(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._consume_forever(), name="tidings-jobs"),
            loop.create_task(
                run_once_periodically(self.lease, self.poll_interval, self._promote, name="job-promote"),
                name="tidings-job-promote",
            ),
        ]

    async def stop(self) -> None:
        """Stop taking jobs, then cancel the running ones and give them back to the queue."""
        self._stopping = True
        # First the loop that takes jobs, so that a job given back below is not taken again here.
        await _cancel_and_wait(self._tasks)
        self._tasks = []
        await _cancel_and_wait(list(self._running))

    async def _promote(self) -> None:
        await self.queue.promote()

    async def _consume_forever(self) -> None:
        failing = False
        next_reclaim = 0.0
        # Checked after every await too: a cancellation may be swallowed inside the Redis client.
        while not self._stopping:
            try:
                if len(self._running) >= self.concurrency:
                    await asyncio.wait(list(self._running), return_when=asyncio.FIRST_COMPLETED)
                    continue
                free = self.concurrency - len(self._running)
                jobs: list[Job] = []
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + self.visibility_timeout / 4
                    jobs = await self.queue.reclaim(
                        self.consumer,
                        min_idle=self.visibility_timeout,
                        count=free,
                        max_deliveries=self.max_attempts,
                    )
                    for job in jobs:
                        logger.warning("job %s (%s) reclaimed from a silent node", job.id, job.kind)
                if not jobs:
                    jobs = await self.queue.take(self.consumer, free, block=self.block_timeout)
                if self._stopping:
                    for job in jobs:
                        await self.queue.release(job)
                    return
                for job in jobs:
                    task = asyncio.get_running_loop().create_task(
                        self._run(job), name=f"tidings-job-{job.kind}"
                    )
                    self._running[task] = job
                    task.add_done_callback(self._running.pop)
                if failing:
                    logger.info("job queue reachable again")
                    failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:
                    logger.exception("taking jobs failed; retrying")
                    failing = True
                await asyncio.sleep(self.block_timeout)

    async def _run(self, job: Job) -> None:
        run = asyncio.current_task()
        assert run is not None
        keeper = asyncio.get_running_loop().create_task(self._keep(job, run))
        try:
            handler = self.handlers.get(job.kind)
            if handler is None:
                raise LookupError(f"no handler for job kind {job.kind!r}")
            await handler(job)
        except asyncio.CancelledError:
            if job.entry in self._lost:
                self._lost.discard(job.entry)
                self.stats.lost += 1
                logger.warning("job %s (%s) was taken over by another node; stopped here", job.id, job.kind)
                return
            if self._stopping:
                with contextlib.suppress(StoreUnavailable):
                    await self.queue.release(job)
            raise
        except Exception as exc:
            await self._failed(job, exc)
        else:
            with _logged("completing job", job):
                if await self.queue.complete(job):
                    self.stats.done += 1
        finally:
            keeper.cancel()

    async def _keep(self, job: Job, run: asyncio.Task[None]) -> None:
        """Touch ``job`` while it runs; cancel ``run`` once another node holds it."""
        while True:
            await asyncio.sleep(self.visibility_timeout / 3)
            with _logged("touching job", job):
                if not await self.queue.touch(job, self.consumer):
                    self._lost.add(job.entry)
                    run.cancel()
                    return

    async def _failed(self, job: Job, exc: Exception) -> None:
        self.stats.failed += 1
        attempts = job.attempts + 1
        error = f"{type(exc).__name__}: {exc}"[:500]
        with _logged("failing job", job):
            if attempts >= self.max_attempts:
                logger.error(
                    "job %s (%s) failed %d times; dead-lettered: %s", job.id, job.kind, attempts, error
                )
                await self.queue.bury(replace(job, attempts=attempts), error)
                return
            delay = min(self.max_backoff, self.retry_backoff * 2 ** (attempts - 1)) * random.uniform(0.8, 1.0)
            logger.warning(
                "job %s (%s) failed (attempt %d), retrying in %.2f s: %s",
                job.id,
                job.kind,
                attempts,
                delay,
                error,
            )
            await self.queue.retry(job, error, run_at=time.time() + delay)


async def _cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they end, cancelling again if one swallowed it.

    A cancellation can get lost in a Redis call (on Python 3.11 ``asyncio.timeout`` may turn it into a
    TimeoutError), after which a retry loop would go on forever.
    """
    for _ in range(100):  # bounded: 10 s
        pending = [task for task in tasks if not task.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
    logger.error("%d job tasks did not stop", sum(not task.done() for task in tasks))


@contextlib.contextmanager
def _logged(action: str, job: Job) -> Iterator[None]:
    """Log a failure to talk to the queue; the job stays pending and is reclaimed later."""
    try:
        yield
    except StoreUnavailable as exc:
        logger.warning("%s %s failed (%r); it will be reclaimed", action, job.id, exc)
