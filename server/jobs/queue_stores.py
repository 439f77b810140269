"""The two JobQueue implementations (contract and guarantees: jobs.JobQueue).

:class:`InMemoryJobQueue` serves a single node; :class:`RedisJobQueue` a
cluster, on a Redis Streams consumer group with a delayed sorted set and a
dead-letter stream (keys in backplane/keys.py, all tagged ``{jobs}`` so that
every script runs on Redis Cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from tidings.server.cluster.backplane import BackplaneUnavailable
from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.jobs.queue import Job, JobCounts, new_job_id

__all__ = ["DEAD_LETTERS_KEPT", "InMemoryJobQueue", "RedisJobQueue"]


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


DEAD_LETTERS_KEPT = 10_000  # the dead-letter stream is trimmed to about this many entries
PROGRESS_TTL = 7 * 86400.0  # seconds a job's checkpoint outlives its last update


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


# --- Redis ------------------------------------------------------------------------------------------

# Every script acknowledges first and acts only if XACK removed the entry from the pending list, so a
# job finished (or failed) by two nodes (one presumed dead) is counted and moved once.

# KEYS[1] job stream, KEYS[2] counts hash, KEYS[3] the job's progress key; ARGV[1] group, ARGV[2] entry id.
_COMPLETE = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'done', 1)
redis.call('DEL', KEYS[3])
return 1
"""

# KEYS[1] job stream, KEYS[2] counts hash, KEYS[3] delayed zset;
# ARGV[1] group, ARGV[2] entry id, ARGV[3] the job with its attempts counted, ARGV[4] when to run it again.
_RETRY = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'failed', 1)
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
return 1
"""

# KEYS[1] job stream, KEYS[2] counts hash, KEYS[3] dead-letter stream, KEYS[4] the job's progress key;
# ARGV[1] group, ARGV[2] entry id, ARGV[3] job, ARGV[4] error, ARGV[5] dead letters kept.
_BURY = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'failed', 1)
redis.call('HINCRBY', KEYS[2], 'dead', 1)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'job', ARGV[3], 'error', ARGV[4])
redis.call('DEL', KEYS[4])
return 1
"""

# KEYS[1] job stream; ARGV[1] group, ARGV[2] entry id, ARGV[3] job. Re-adds the job as a new entry.
_RELEASE = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[3])
return 1
"""

# KEYS[1] job stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id.
# Resets the entry's idle time, only if this consumer still holds it. JUSTID: the delivery count stays.
_TOUCH = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# KEYS[1] delayed zset, KEYS[2] job stream; ARGV[1] now (epoch seconds), ARGV[2] most jobs to move.
# One script: a due job leaves the set and enters the stream together, even with two promoters.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for i = 1, #due do redis.call('XADD', KEYS[2], '*', 'job', due[i]) end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return #due
"""

# KEYS[1] job stream, KEYS[2] counts hash, KEYS[3] dead-letter stream;
# ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle (ms), ARGV[4] count, ARGV[5] max deliveries,
# ARGV[6] dead letters kept. Returns the claimed entries {id, {field, value, ...}}; entries delivered
# more than max deliveries times (their nodes kept dying) go to the dead letters instead.
_RECLAIM = """
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local jobs = {}
for _, entry in ipairs(claimed[2]) do
  local id, fields = entry[1], entry[2]
  if not fields then
    redis.call('XACK', KEYS[1], ARGV[1], id)
  else
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    local deliveries = pending[1] and tonumber(pending[1][4]) or 0
    if deliveries > tonumber(ARGV[5]) then
      redis.call('XACK', KEYS[1], ARGV[1], id)
      redis.call('XDEL', KEYS[1], id)
      redis.call('HINCRBY', KEYS[2], 'failed', 1)
      redis.call('HINCRBY', KEYS[2], 'dead', 1)
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'job', fields[2],
        'error', 'lost ' .. (deliveries - 1) .. ' times (its node died or stalled)')
    else
      table.insert(jobs, entry)
    end
  end
end
return jobs
"""


class RedisJobQueue:
    """The JobQueue contract on a Redis Streams consumer group (see the module docstring).

    Keys (keys.py, all tagged ``{jobs}``): the job stream with its consumer group,
    the delayed sorted set (score: when to run), the dead-letter stream, a counts
    hash, and one progress key per running job. Acknowledged entries are deleted,
    so the stream only holds jobs that are waiting or running.
    """

    GROUP = "workers"

    def __init__(
        self, client: aioredis.Redis, *, key_prefix: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = client
        self._prefix = key_prefix
        self._clock = clock
        self._stream = redis_keys.jobs_stream(key_prefix)
        self._delayed = redis_keys.jobs_delayed(key_prefix)
        self._dead = redis_keys.jobs_dead(key_prefix)
        self._counts = redis_keys.jobs_counts(key_prefix)
        self._group_ready = False
        self._complete = client.register_script(_COMPLETE)
        self._retry = client.register_script(_RETRY)
        self._bury = client.register_script(_BURY)
        self._release = client.register_script(_RELEASE)
        self._touch = client.register_script(_TOUCH)
        self._promote = client.register_script(_PROMOTE)
        self._reclaim = client.register_script(_RECLAIM)

    def _progress(self, job_id: str) -> str:
        return redis_keys.job_progress(self._prefix, job_id)

    async def _ensure_group(self) -> None:
        # From id 0, not $: jobs enqueued before the first worker started must be seen too.
        try:
            await self._redis.xgroup_create(self._stream, self.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def enqueue(self, kind: str, payload: dict[str, Any], *, run_at: float | None = None) -> str:
        job = Job(new_job_id(), kind, payload, 0, self._clock())
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                if run_at is not None and run_at > self._clock():
                    pipe.zadd(self._delayed, {job.dumps(): run_at})
                else:
                    pipe.xadd(self._stream, {"job": job.dumps()})
                pipe.hincrby(self._counts, "enqueued", 1)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("enqueue failed") from exc
        return job.id

    async def take(self, consumer: str, count: int, *, block: float) -> list[Job]:
        if not self._group_ready:
            await self._ensure_group()
        try:
            reply = await self._redis.xreadgroup(
                self.GROUP, consumer, {self._stream: ">"}, count=count, block=max(1, int(block * 1000))
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was lost (e.g. Redis restarted without persistence)
                self._group_ready = False
                return []
            raise
        # RESP2 answers [[stream, entries]], RESP3 {stream: entries}.
        streams: Any = reply.values() if isinstance(reply, dict) else [e for _, e in reply or ()]
        return [self._decode_entry(entry_id, fields) for entries in streams for entry_id, fields in entries]

    @staticmethod
    def _decode_entry(entry_id: str | bytes, fields: Mapping[Any, Any]) -> Job:
        raw = fields.get(b"job", fields.get("job", b""))
        error = fields.get(b"error", fields.get("error"))
        return Job.loads(raw, entry=_text(entry_id), error=None if error is None else _text(error))

    async def reclaim(self, consumer: str, *, min_idle: float, count: int, max_deliveries: int) -> list[Job]:
        if not self._group_ready:
            await self._ensure_group()
        try:
            entries: Any = await self._reclaim(
                keys=[self._stream, self._counts, self._dead],
                args=[self.GROUP, consumer, int(min_idle * 1000), count, max_deliveries, DEAD_LETTERS_KEPT],
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was lost; take() creates the group again
                self._group_ready = False
                return []
            raise
        jobs = []
        for entry_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            jobs.append(self._decode_entry(entry_id, fields))
        return jobs

    async def touch(self, job: Job, consumer: str) -> bool:
        try:
            return bool(await self._touch(keys=[self._stream], args=[self.GROUP, consumer, job.entry]))
        except ResponseError:  # NOGROUP: the stream is gone, and the job with it
            return False

    async def complete(self, job: Job) -> bool:
        return bool(
            await self._complete(
                keys=[self._stream, self._counts, self._progress(job.id)], args=[self.GROUP, job.entry]
            )
        )

    async def retry(self, job: Job, error: str, *, run_at: float) -> bool:
        again = replace(job, attempts=job.attempts + 1)
        return bool(
            await self._retry(
                keys=[self._stream, self._counts, self._delayed],
                args=[self.GROUP, job.entry, again.dumps(), run_at],
            )
        )

    async def bury(self, job: Job, error: str) -> bool:
        return bool(
            await self._bury(
                keys=[self._stream, self._counts, self._dead, self._progress(job.id)],
                args=[self.GROUP, job.entry, job.dumps(), error[:500], DEAD_LETTERS_KEPT],
            )
        )

    async def release(self, job: Job) -> bool:
        return bool(await self._release(keys=[self._stream], args=[self.GROUP, job.entry, job.dumps()]))

    async def promote(self) -> int:
        return int(await self._promote(keys=[self._delayed, self._stream], args=[self._clock(), 100]))

    async def counts(self) -> JobCounts:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xlen(self._stream)
                pipe.xpending(self._stream, self.GROUP)
                pipe.zcard(self._delayed)
                pipe.hgetall(self._counts)
                queued, pending, delayed, counters = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("job counts unavailable") from exc
        for value in (queued, delayed, counters):
            if isinstance(value, Exception):
                raise BackplaneUnavailable("job counts unavailable") from value
        running = 0 if isinstance(pending, Exception) else int(pending["pending"])  # no group yet: none
        numbers = {_text(k): int(v) for k, v in counters.items()}
        return JobCounts(
            pending=max(0, int(queued) - running),
            running=running,
            delayed=int(delayed),
            done=numbers.get("done", 0),
            failed=numbers.get("failed", 0),
            dead=numbers.get("dead", 0),
        )

    async def dead_letters(self, limit: int = 100) -> list[Job]:
        try:
            entries: Any = await self._redis.xrevrange(self._dead, count=limit)
        except (RedisError, OSError) as exc:
            raise BackplaneUnavailable("dead letters unavailable") from exc
        return [self._decode_entry(entry_id, fields) for entry_id, fields in entries]

    async def load_progress(self, job_id: str) -> str | None:
        value = await self._redis.get(self._progress(job_id))
        return None if value is None else _text(value)

    async def save_progress(self, job_id: str, value: str) -> None:
        await self._redis.set(self._progress(job_id), value, ex=int(PROGRESS_TTL))
