"""Jobs in Redis: the cluster :class:`~tidings.server.jobs.queue.JobQueue`.

A Redis Streams consumer group with a delayed sorted set and a dead-letter
stream (keys in backplane/keys.py, all tagged ``{jobs}`` so that every script
runs on Redis Cluster).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from redis.exceptions import ResponseError

from tidings.server.cluster.backplane import keys as redis_keys
from tidings.server.cluster.redis_client import StoreClient
from tidings.server.cluster.redis_errors import redis_errors
from tidings.server.errors import StoreUnavailable
from tidings.server.jobs.queue import DEAD_LETTERS_KEPT, Job, JobCounts, new_job_id

__all__ = ["RedisJobQueue"]

PROGRESS_TTL = 7 * 86400.0  # seconds a job's checkpoint outlives its last update


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


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
    """The JobQueue contract on a Redis Streams consumer group.

    Keys (keys.py, all tagged ``{jobs}``): the job stream with its consumer group,
    the delayed sorted set (score: when to run), the dead-letter stream, a counts
    hash, and one progress key per running job. Acknowledged entries are deleted,
    so the stream only holds jobs that are waiting or running.
    """

    GROUP = "workers"

    def __init__(
        self, client: StoreClient, *, key_prefix: str, clock: Callable[[], float] = time.time
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
        with redis_errors("enqueue failed"):
            async with self._redis.pipeline(transaction=True) as pipe:
                if run_at is not None and run_at > self._clock():
                    pipe.zadd(self._delayed, {job.dumps(): run_at})
                else:
                    pipe.xadd(self._stream, {"job": job.dumps()})
                pipe.hincrby(self._counts, "enqueued", 1)
                await pipe.execute()
        return job.id

    async def take(self, consumer: str, count: int, *, block: float) -> list[Job]:
        with redis_errors("taking jobs failed"):
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
        with redis_errors("reclaiming jobs failed"):
            if not self._group_ready:
                await self._ensure_group()
            try:
                entries: Any = await self._reclaim(
                    keys=[self._stream, self._counts, self._dead],
                    args=[
                        self.GROUP,
                        consumer,
                        int(min_idle * 1000),
                        count,
                        max_deliveries,
                        DEAD_LETTERS_KEPT,
                    ],
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
        with redis_errors("touching a job failed"):
            try:
                return bool(await self._touch(keys=[self._stream], args=[self.GROUP, consumer, job.entry]))
            except ResponseError:  # NOGROUP: the stream is gone, and the job with it
                return False

    async def complete(self, job: Job) -> bool:
        with redis_errors("completing a job failed"):
            return bool(
                await self._complete(
                    keys=[self._stream, self._counts, self._progress(job.id)], args=[self.GROUP, job.entry]
                )
            )

    async def retry(self, job: Job, error: str, *, run_at: float) -> bool:
        again = replace(job, attempts=job.attempts + 1)
        with redis_errors("retrying a job failed"):
            return bool(
                await self._retry(
                    keys=[self._stream, self._counts, self._delayed],
                    args=[self.GROUP, job.entry, again.dumps(), run_at],
                )
            )

    async def bury(self, job: Job, error: str) -> bool:
        with redis_errors("dead-lettering a job failed"):
            return bool(
                await self._bury(
                    keys=[self._stream, self._counts, self._dead, self._progress(job.id)],
                    args=[self.GROUP, job.entry, job.dumps(), error[:500], DEAD_LETTERS_KEPT],
                )
            )

    async def release(self, job: Job) -> bool:
        with redis_errors("releasing a job failed"):
            return bool(await self._release(keys=[self._stream], args=[self.GROUP, job.entry, job.dumps()]))

    async def promote(self) -> int:
        with redis_errors("promoting due jobs failed"):
            return int(await self._promote(keys=[self._delayed, self._stream], args=[self._clock(), 100]))

    async def counts(self) -> JobCounts:
        with redis_errors("job counts unavailable"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xlen(self._stream)
                pipe.xpending(self._stream, self.GROUP)
                pipe.zcard(self._delayed)
                pipe.hgetall(self._counts)
                queued, pending, delayed, counters = await pipe.execute(raise_on_error=False)
        for value in (queued, delayed, counters):
            if isinstance(value, Exception):
                raise StoreUnavailable("job counts unavailable") from value
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
        with redis_errors("dead letters unavailable"):
            entries: Any = await self._redis.xrevrange(self._dead, count=limit)
        return [self._decode_entry(entry_id, fields) for entry_id, fields in entries]

    async def load_progress(self, job_id: str) -> str | None:
        with redis_errors("reading job progress failed"):
            value = await self._redis.get(self._progress(job_id))
        return None if value is None else _text(value)

    async def save_progress(self, job_id: str, value: str) -> None:
        with redis_errors("saving job progress failed"):
            await self._redis.set(self._progress(job_id), value, ex=int(PROGRESS_TTL))
