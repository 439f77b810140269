"""The one place that decides what a failed Redis call means.

A store call that fails because Redis cannot serve it raises :class:`StoreUnavailable`
(temporary, the caller answers 503) with the Redis error chained::

    with redis_errors("presence add failed"):
        await pipe.execute()

Loops that keep a link or a heartbeat alive do not raise: they catch :data:`REDIS_ERRORS`,
log the change once and retry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import RedisError

from tidings.server.errors import StoreUnavailable

__all__ = ["REDIS_ERRORS", "redis_errors"]

REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)
"""What a Redis call raises when the server cannot serve it: redis-py's errors, and socket errors
(``OSError``) that reach us unwrapped, e.g. from a connection reset mid-reply."""


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Turn a Redis error raised inside the block into ``StoreUnavailable(what)``.

    Args:
        what: the failed operation, e.g. ``"inbox read failed"``; the message of the error.

    Raises:
        StoreUnavailable: Redis raised one of :data:`REDIS_ERRORS`; the cause is chained.
    """
    try:
        yield
    except REDIS_ERRORS as exc:
        raise StoreUnavailable(what) from exc
