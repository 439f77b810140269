"""Work that exactly one node of the cluster must do.

:class:`Lease` is the building block for periodic work: a Redis key taken with
``SET NX PX`` and a random token, renewed while held, released only by its
holder (compare and delete in Lua). :func:`run_once_periodically` runs a task
every ``interval`` on whichever node holds the lease at that moment, so a
periodic job (dead-node clean-up, moving due scheduled jobs) runs once per tick
across the cluster and moves to another node within one lease TTL when its node
dies.

A :class:`JobQueue` carries one-off jobs (topic fan-out, scheduled
notifications); its implementations live in jobqueue.py. ``RedisJobQueue`` is a
Redis Streams consumer group:

* each job is read by exactly one consumer (``XREADGROUP ... >``) and stays in
  that consumer's pending list until it is acknowledged;
* a node that dies mid-job stops touching it; after ``visibility_timeout`` any
  other node claims it (``XAUTOCLAIM``) and runs it again, so handlers are
  written to be idempotent (the fan-out checkpoints its progress and adds to an
  inbox at most once);
* a job that raises is retried with exponential backoff (through the delayed
  sorted set, which also holds scheduled jobs) and, after ``max_attempts``
  failed runs, moved to a dead-letter stream; a job whose node keeps dying is
  dead-lettered the same way, so no job loops forever.

``InMemoryJobQueue`` keeps the same contract within one process.
:class:`JobWorker` takes and runs jobs; a node with ``TIDINGS_JOBS=off`` runs no
worker but may still enqueue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tidings.server.cluster.backplane import BackplaneUnavailable

__all__ = [
    "Job",
    "JobCounts",
    "JobHandler",
    "JobQueue",
    "JobWorker",
    "Lease",
    "LocalLease",
    "new_job_id",
    "run_once_periodically",
]

logger = logging.getLogger("tidings.jobs")

# KEYS[1] lease key; ARGV[1] holder token. Deletes the key only if we still hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] lease key; ARGV[1] holder token, ARGV[2] ttl in ms. Extends the key only if we still hold it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Lease:
    """A cluster-wide mutual exclusion with a TTL: at most one holder at a time.

    Guarantee: while ``acquire`` returned True and less than ``ttl`` has passed
    (or the last ``renew`` succeeded), no other node holds it. A holder that dies
    loses it after ``ttl``.
    """

    def __init__(self, client: aioredis.Redis, key: str, *, ttl: float) -> None:
        self._redis = client
        self.key = key
        self.ttl = ttl
        self._token = secrets.token_hex(8)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    async def acquire(self) -> bool:
        return bool(await self._redis.set(self.key, self._token, nx=True, px=int(self.ttl * 1000)))

    async def renew(self) -> bool:
        return bool(await self._renew(keys=[self.key], args=[self._token, int(self.ttl * 1000)]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self._token])


class LocalLease:
    """The single-node stand-in for :class:`Lease`: the only node always holds it."""

    def __init__(self, key: str = "local", *, ttl: float = 1.0) -> None:
        self.key = key
        self.ttl = ttl

    async def acquire(self) -> bool:
        return True

    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        return None


async def run_once_periodically(
    lease: Lease | LocalLease, interval: float, task: Callable[[], Awaitable[None]], *, name: str
) -> None:
    """Every ``interval`` seconds, run ``task`` if this node gets ``lease``; runs until cancelled.

    A failing task or an unreachable Redis is logged (once per change) and retried next tick.
    """
    failing = False
    while True:
        try:
            if await lease.acquire():
                try:
                    await task()
                finally:
                    with contextlib.suppress(RedisError, OSError):
                        await lease.release()
            if failing:
                logger.info("job %s: running again", name)
                failing = False
        except asyncio.CancelledError:
            raise
        except Exception:
            if not failing:
                logger.exception("job %s failed; retrying every %.1f s", name, interval)
                failing = True
        await asyncio.sleep(interval)


# --- jobs -------------------------------------------------------------------------------------------


def new_job_id() -> str:
    """A cluster-unique job id that sorts by creation time (milliseconds, then random)."""
    return f"{int(time.time() * 1000):x}-{secrets.token_hex(5)}"


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of background work.

    ``id`` stays the same across retries; ``entry`` names one delivery of it
    (the stream entry in Redis) and changes when the job is retried.
    """

    id: str
    kind: str
    payload: dict[str, Any]
    attempts: int = 0  # failed runs so far
    enqueued_at: float = 0.0
    error: str | None = None  # why it failed last (dead letters)
    entry: str = ""

    def dumps(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "kind": self.kind,
                "payload": self.payload,
                "attempts": self.attempts,
                "enqueued_at": self.enqueued_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, text: str | bytes, *, entry: str = "", error: str | None = None) -> Job:
        """Decode :meth:`dumps`; an unreadable job becomes kind ``""``, which no handler takes (dead-lettered)."""
        try:
            value = json.loads(text)
            return cls(
                str(value["id"]),
                str(value["kind"]),
                dict(value["payload"]),
                int(value.get("attempts", 0)),
                float(value.get("enqueued_at", 0.0)),
                error,
                entry,
            )
        except (ValueError, KeyError, TypeError):
            raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
            return cls(entry or new_job_id(), "", {"unreadable": raw[:200]}, 0, 0.0, error, entry)

    def encode(self) -> dict[str, Any]:
        """The job as the API shows it."""
        result = {
            "id": self.id,
            "kind": self.kind,
            "attempts": self.attempts,
            "enqueued_at": self.enqueued_at,
        }
        if self.error is not None:
            result["error"] = self.error
        return result


@dataclass(frozen=True, slots=True)
class JobCounts:
    """The queue's state across the cluster (``GET /api/jobs``, ``/metrics``)."""

    pending: int  # waiting for a node
    running: int  # taken by a node and not finished
    delayed: int  # scheduled for later, or waiting for a retry
    done: int  # finished, since the queue was created
    failed: int  # failed runs (each retry counts)
    dead: int  # given up on: moved to the dead-letter stream

    def encode(self) -> dict[str, int]:
        return {
            "pending": self.pending,
            "running": self.running,
            "delayed": self.delayed,
            "done": self.done,
            "failed": self.failed,
            "dead": self.dead,
        }


class JobQueue(Protocol):
    """A queue of jobs that each run on exactly one node at a time.

    Guarantees:
      * ``take`` hands a job to one consumer only; until ``complete``, ``retry``,
        ``bury`` or ``release`` it is that consumer's (``running``).
      * a job whose consumer stops calling ``touch`` for ``min_idle`` seconds is
        handed out again by ``reclaim`` (at-least-once: handlers are idempotent);
        after ``max_deliveries`` such hand-outs it is dead-lettered instead.
      * ``complete``, ``retry``, ``bury`` and ``release`` each take effect once:
        they return False (and change nothing) when the job is no longer held,
        e.g. because another consumer reclaimed and finished it.
      * jobs enqueued with ``run_at`` (and retries) wait in a delayed set until
        ``promote`` moves them into the queue, each exactly once.
    Errors raise BackplaneUnavailable.
    """

    async def enqueue(self, kind: str, payload: dict[str, Any], *, run_at: float | None = None) -> str:
        """Add a job (to run at ``run_at``, epoch seconds, if given); return its id."""

    async def take(self, consumer: str, count: int, *, block: float) -> list[Job]:
        """Up to ``count`` new jobs for ``consumer``, waiting up to ``block`` seconds for one."""

    async def reclaim(self, consumer: str, *, min_idle: float, count: int, max_deliveries: int) -> list[Job]:
        """Jobs whose consumer has not touched them for ``min_idle`` seconds, now ``consumer``'s."""

    async def touch(self, job: Job, consumer: str) -> bool:
        """Reset the job's idle time; False if ``consumer`` no longer holds it."""

    async def complete(self, job: Job) -> bool:
        """The job is done: remove it for good."""

    async def retry(self, job: Job, error: str, *, run_at: float) -> bool:
        """The run failed: count the attempt and run the job again at ``run_at``."""

    async def bury(self, job: Job, error: str) -> bool:
        """The job failed for good: move it to the dead letters."""

    async def release(self, job: Job) -> bool:
        """Give the job back unchanged (node shutting down), so another consumer takes it now."""

    async def promote(self) -> int:
        """Move every delayed job that is due into the queue; return how many."""

    async def counts(self) -> JobCounts: ...

    async def dead_letters(self, limit: int = 100) -> list[Job]:
        """The newest dead-lettered jobs, newest first, with their ``error``."""

    async def load_progress(self, job_id: str) -> str | None:
        """The checkpoint a handler saved for this job (to resume after a crash), if any."""

    async def save_progress(self, job_id: str, value: str) -> None: ...


# --- the worker -------------------------------------------------------------------------------------

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

    queue: JobQueue
    handlers: Mapping[str, JobHandler]
    consumer: str
    lease: Lease | LocalLease
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
                with contextlib.suppress(RedisError, OSError, BackplaneUnavailable):
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
    except (RedisError, OSError, BackplaneUnavailable) as exc:
        logger.warning("%s %s failed (%r); it will be reclaimed", action, job.id, exc)
