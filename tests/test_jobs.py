"""The JobQueue contract and the JobWorker, over memory and a real Redis/Valkey server.

Whatever InMemoryJobQueue does, RedisJobQueue must match: each job taken by one
consumer, reclaimed from a silent one, retried with backoff, dead-lettered after
N failures, delayed jobs run at their time, and running jobs handed back on stop.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.lease import Lease, LocalLease, RedisLease
from tidings.server.jobs.queue import Job, JobQueue
from tidings.server.jobs.queue_memory import InMemoryJobQueue
from tidings.server.jobs.queue_redis import RedisJobQueue
from tidings.server.jobs.worker import JobHandler, JobWorker

from .support.timing import UNIT, wait_until

FAST = 0.3 * UNIT  # visibility timeout of "fast" workers: a silent consumer loses its job after this


@dataclass
class Backend:
    queue: JobQueue
    client: aioredis.Redis | None
    key_prefix: str
    workers: list[JobWorker] = field(default_factory=list)

    async def worker(self, handlers: dict[str, JobHandler], consumer: str, **options: Any) -> JobWorker:
        """Start a worker (stopped at the end of the test)."""
        lease: Lease = (
            LocalLease()
            if self.client is None
            else RedisLease(self.client, redis_keys.lease(self.key_prefix, "job-promote"), ttl=1.0)
        )
        options.setdefault("poll_interval", 0.05)
        options.setdefault("block_timeout", 0.2)
        worker = JobWorker(self.queue, handlers, consumer=consumer, lease=lease, **options)
        await worker.start()
        self.workers.append(worker)
        return worker

    async def counts_are(self, **expected: int) -> bool:
        counts = (await self.queue.counts()).encode()
        return all(counts[name] == value for name, value in expected.items())


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[Backend]:
    client = None
    if request.param == "memory":
        queue: JobQueue = InMemoryJobQueue()
    else:
        client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"), socket_timeout=2.0)
        queue = RedisJobQueue(client, key_prefix=key_prefix)
    backend = Backend(queue, client, key_prefix)
    try:
        yield backend
    finally:
        for worker in backend.workers:
            await worker.stop()
        if client is not None:
            await client.aclose()


async def test_each_job_runs_exactly_once_across_three_workers(backend: Backend) -> None:
    """60 jobs, three competing workers: every job runs once, and the counts say done = 60."""
    runs: Counter[int] = Counter()

    async def count(job: Job) -> None:
        runs[job.payload["n"]] += 1
        await asyncio.sleep(0)

    for n in range(30):  # some enqueued before any worker exists: the group must see them
        await backend.queue.enqueue("count", {"n": n})
    for i in range(3):
        await backend.worker({"count": count}, consumer=f"node-{i}")
    for n in range(30, 60):
        await backend.queue.enqueue("count", {"n": n})
    await wait_until(lambda: backend.counts_are(done=60, pending=0, running=0), what="60 jobs done")
    assert sorted(runs) == list(range(60))
    assert set(runs.values()) == {1}
    assert sum(w.stats.done for w in backend.workers) == 60


async def test_failing_job_is_retried_with_backoff_then_dead_lettered(backend: Backend) -> None:
    """A job that always raises runs max_attempts times, further and further apart, then is a dead letter."""
    runs: list[tuple[int, float]] = []

    async def fail(job: Job) -> None:
        runs.append((job.attempts, time.monotonic()))
        raise ValueError("the payment service is down")

    await backend.worker({"charge": fail}, consumer="node-1", max_attempts=3, retry_backoff=0.1)
    job_id = await backend.queue.enqueue("charge", {"order": 7})
    await wait_until(lambda: backend.counts_are(dead=1), what="the job dead-lettered")
    assert [attempts for attempts, _ in runs] == [0, 1, 2]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(runs)]
    assert gaps[0] >= 0.08 and gaps[1] >= 0.16  # 0.1 s then 0.2 s, less at most 20 % jitter
    assert await backend.counts_are(pending=0, running=0, delayed=0, done=0, failed=3, dead=1)
    [letter] = await backend.queue.dead_letters()
    assert (letter.id, letter.kind, letter.payload, letter.attempts) == (job_id, "charge", {"order": 7}, 3)
    assert letter.error is not None and "ValueError: the payment service is down" in letter.error


async def test_job_of_unknown_kind_ends_as_dead_letter(backend: Backend) -> None:
    """No handler for a kind (e.g. enqueued by a newer version) is a failure like any other: never a loop."""
    await backend.worker({}, consumer="node-1", max_attempts=2, retry_backoff=0.01)
    await backend.queue.enqueue("from-the-future", {})
    await wait_until(lambda: backend.counts_are(dead=1, failed=2), what="dead letter")
    [letter] = await backend.queue.dead_letters()
    assert letter.error is not None and "no handler" in letter.error


async def test_job_that_fails_then_succeeds_is_done_once(backend: Backend) -> None:
    """Two failures, then success: done once, two failed runs counted, nothing dead."""
    seen: list[int] = []

    async def flaky(job: Job) -> None:
        seen.append(job.attempts)
        if job.attempts < 2:
            raise ConnectionError("try again")

    await backend.worker({"flaky": flaky}, consumer="node-1", retry_backoff=0.01)
    await backend.queue.enqueue("flaky", {})
    await wait_until(lambda: backend.counts_are(done=1), what="done")
    assert seen == [0, 1, 2]
    assert await backend.counts_are(failed=2, dead=0, pending=0, running=0, delayed=0)


async def test_job_of_a_dead_consumer_is_reclaimed_and_finished_by_another(backend: Backend) -> None:
    """A consumer takes a job and goes silent; after the visibility timeout another worker runs it."""
    await backend.queue.enqueue("work", {"x": 1})
    [taken] = await backend.queue.take("dead-node", 10, block=1.0)
    ran: list[str] = []

    async def work(job: Job) -> None:
        ran.append(job.id)

    started = time.monotonic()
    await backend.worker({"work": work}, consumer="alive-node", visibility_timeout=FAST)
    await wait_until(lambda: backend.counts_are(done=1), what="reclaimed job done")
    assert ran == [taken.id]
    assert time.monotonic() - started >= FAST * 0.9  # not before the visibility timeout
    assert not await backend.queue.complete(taken)  # the dead node's late ack changes nothing
    assert await backend.counts_are(done=1, running=0, pending=0)


async def test_job_lost_too_often_is_dead_lettered(backend: Backend) -> None:
    """A job whose consumers keep dying (e.g. it crashes the node) stops after max_deliveries."""
    await backend.queue.enqueue("crash", {})
    assert len(await backend.queue.take("node-0", 1, block=1.0)) == 1
    again = await backend.queue.reclaim("node-1", min_idle=0, count=10, max_deliveries=2)
    assert len(again) == 1
    assert await backend.queue.reclaim("node-2", min_idle=0, count=10, max_deliveries=2) == []
    assert await backend.counts_are(dead=1, running=0, pending=0)
    [letter] = await backend.queue.dead_letters()
    assert letter.kind == "crash" and letter.error is not None and "lost 2 times" in letter.error


async def test_touch_tells_a_consumer_it_lost_the_job(backend: Backend) -> None:
    """After another consumer reclaimed a job, the old one can neither touch nor finish it."""
    await backend.queue.enqueue("work", {})
    [job] = await backend.queue.take("a", 1, block=1.0)
    assert await backend.queue.touch(job, "a")
    [again] = await backend.queue.reclaim("b", min_idle=0, count=1, max_deliveries=5)
    assert not await backend.queue.touch(job, "a")
    assert await backend.queue.touch(again, "b")
    assert await backend.queue.complete(again)
    assert not await backend.queue.complete(job)
    assert not await backend.queue.retry(job, "late", run_at=time.time())
    assert await backend.counts_are(done=1, failed=0, delayed=0)


async def test_stalled_worker_stops_a_job_taken_over_by_another_node(backend: Backend) -> None:
    """A worker whose job was reclaimed (it looked dead) cancels its own run when its touch fails."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hang(job: Job) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker = await backend.worker({"hang": hang}, consumer="slow-node", visibility_timeout=FAST)
    await backend.queue.enqueue("hang", {})
    async with asyncio.timeout(5 * UNIT):
        await started.wait()
    [stolen] = await backend.queue.reclaim("other-node", min_idle=0, count=1, max_deliveries=5)
    async with asyncio.timeout(5 * UNIT):
        await cancelled.wait()
    await wait_until(lambda: worker.stats.lost == 1 and worker.running == 0, what="run abandoned")
    assert await backend.queue.complete(stolen)
    assert worker.stats.done == 0 and worker.stats.failed == 0


async def test_long_job_is_kept_by_its_worker_past_the_visibility_timeout(backend: Backend) -> None:
    """A job that runs for several visibility timeouts is touched, so no other node reclaims it."""
    release = asyncio.Event()
    runs: list[str] = []

    async def long(job: Job) -> None:
        runs.append(job.id)
        await release.wait()

    await backend.worker({"long": long}, consumer="node-1", visibility_timeout=FAST)
    await backend.queue.enqueue("long", {})
    await wait_until(lambda: len(runs) == 1, what="job started")
    deadline = time.monotonic() + 3 * FAST
    while time.monotonic() < deadline:  # bounded: three visibility timeouts
        assert await backend.queue.reclaim("thief", min_idle=FAST, count=1, max_deliveries=5) == []
        await asyncio.sleep(FAST / 5)
    release.set()
    await wait_until(lambda: backend.counts_are(done=1), what="long job done")
    assert len(runs) == 1


async def test_delayed_job_runs_at_its_time_not_before(backend: Backend) -> None:
    """A job scheduled 0.6 s ahead waits in the delayed set and runs within a second of its time."""
    ran_at: list[float] = []

    async def at(job: Job) -> None:
        ran_at.append(time.time())

    await backend.worker({"at": at}, consumer="node-1")
    run_at = time.time() + 0.6
    await backend.queue.enqueue("at", {}, run_at=run_at)
    assert await backend.counts_are(delayed=1, pending=0)
    await wait_until(lambda: bool(ran_at), what="scheduled job ran")
    assert run_at <= ran_at[0] < run_at + 1.0
    assert await backend.counts_are(delayed=0, done=1)


async def test_stopping_worker_hands_running_job_back_at_once(backend: Backend) -> None:
    """On stop a running job is given back, and another node takes it without waiting for the timeout."""
    started = asyncio.Event()

    async def hang(job: Job) -> None:
        started.set()
        await asyncio.Event().wait()

    first = await backend.worker({"job": hang}, consumer="leaving-node", visibility_timeout=60.0)
    await backend.queue.enqueue("job", {"n": 1})
    async with asyncio.timeout(5 * UNIT):
        await started.wait()
    await first.stop()
    assert await backend.counts_are(pending=1, running=0)
    ran: list[dict[str, Any]] = []

    async def record(job: Job) -> None:
        ran.append(job.payload)

    await backend.worker({"job": record}, consumer="staying-node", visibility_timeout=60.0)
    await wait_until(lambda: ran == [{"n": 1}], timeout=5 * UNIT, what="job taken over")


async def test_progress_is_kept_until_the_job_is_done(backend: Backend) -> None:
    """A checkpoint survives the handler (for a re-run) and is dropped when the job completes."""
    await backend.queue.enqueue("work", {})
    [job] = await backend.queue.take("a", 1, block=1.0)
    assert await backend.queue.load_progress(job.id) is None
    await backend.queue.save_progress(job.id, "cursor-42")
    assert await backend.queue.load_progress(job.id) == "cursor-42"
    assert await backend.queue.complete(job)
    assert await backend.queue.load_progress(job.id) is None


def test_job_encoding_round_trips_and_survives_garbage() -> None:
    """A job decodes to itself; an unreadable one becomes a kind no handler takes (so it dead-letters)."""
    job = Job("id-1", "notify", {"a": [1, "ü"]}, 2, 1700000000.5)
    assert Job.loads(job.dumps(), entry="1-0") == Job(
        "id-1", "notify", {"a": [1, "ü"]}, 2, 1700000000.5, None, "1-0"
    )
    broken = Job.loads(b"{not json", entry="5-0")
    assert broken.kind == "" and broken.entry == "5-0"


@pytest.mark.redis
async def test_worker_goes_on_after_the_job_stream_is_lost(redis_url: str, key_prefix: str) -> None:
    """Redis restarted without persistence (stream and group gone): the worker recreates the group."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=2.0)
    backend = Backend(RedisJobQueue(client, key_prefix=key_prefix), client, key_prefix)
    ran: list[int] = []

    async def work(job: Job) -> None:
        ran.append(job.payload["n"])

    try:
        await backend.worker({"work": work}, consumer="node-1", visibility_timeout=FAST)
        await backend.queue.enqueue("work", {"n": 1})
        await wait_until(lambda: ran == [1], what="first job")
        await client.delete(redis_keys.jobs_stream(key_prefix))
        await backend.queue.enqueue("work", {"n": 2})
        await wait_until(lambda: ran == [1, 2], what="job after the stream was lost")
    finally:
        for worker in backend.workers:
            await worker.stop()
        await client.aclose()
