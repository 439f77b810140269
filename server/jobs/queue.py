"""Background jobs that each run on exactly one node at a time: the job, and the queue contract.

The queue's contract is split by who uses it: the notifier enqueues
(:class:`JobProducer`) and its handler checkpoints its progress
(:class:`JobCheckpoints`); the :class:`~tidings.server.jobs.worker.JobWorker` takes
and settles jobs (:class:`JobConsumer`); ``GET /api/jobs`` and ``/metrics`` look at
the queue (:class:`JobMonitor`). :class:`JobQueue` is all four, as both
implementations provide it: :class:`~tidings.server.jobs.queue_memory.InMemoryJobQueue`
within one process, :class:`~tidings.server.jobs.queue_redis.RedisJobQueue` on a Redis
Streams consumer group (tests/test_jobs.py runs the contract over both):

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

Periodic work under a cluster-wide lease (promoting due jobs, the dead-node sweep)
is ``tidings.server.cluster.lease``.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "DEAD_LETTERS_KEPT",
    "Job",
    "JobCheckpoints",
    "JobConsumer",
    "JobCounts",
    "JobMonitor",
    "JobProducer",
    "JobQueue",
    "new_job_id",
]


DEAD_LETTERS_KEPT = 10_000  # the dead letters kept (Redis trims its stream to about this many)


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


class JobProducer(Protocol):
    """Where new jobs go. Errors raise StoreUnavailable (nothing was enqueued)."""

    async def enqueue(self, kind: str, payload: dict[str, Any], *, run_at: float | None = None) -> str:
        """Add a job (to run at ``run_at``, epoch seconds, if given); return its id."""


class JobCheckpoints(Protocol):
    """A running job's saved progress, so that a run after a crash resumes. Errors raise StoreUnavailable.

    Guarantee: a checkpoint is forgotten when its job is completed or dead-lettered (in Redis, also a
    week after it was last saved).
    """

    async def load_progress(self, job_id: str) -> str | None:
        """The checkpoint a handler saved for this job (to resume after a crash), if any."""

    async def save_progress(self, job_id: str, value: str) -> None: ...


class JobConsumer(Protocol):
    """Taking jobs and settling them: what a worker does.

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
    Errors raise StoreUnavailable.
    """

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


class JobMonitor(Protocol):
    """The queue as operators see it. Errors raise StoreUnavailable."""

    async def counts(self) -> JobCounts:
        """How many jobs are pending, running, delayed, done, failed and dead, across the cluster."""

    async def dead_letters(self, limit: int = 100) -> list[Job]:
        """The newest dead-lettered jobs, newest first, with their ``error``."""


class JobQueue(JobProducer, JobCheckpoints, JobConsumer, JobMonitor, Protocol):
    """A queue of jobs that each run on exactly one node at a time: every role above, as each implementation is."""
