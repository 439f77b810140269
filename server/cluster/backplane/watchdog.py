"""Keeping the pub/sub link honest: a timer that notices silence, and a cheap push handler.

The link's reader must stay lean (every publication of every subscribed channel passes
through it), so silence is watched by one timer per link instead of a timeout around
every read (about 9 µs each on a small VM).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio.connection import AbstractConnection

__all__ = ["LinkWatchdog", "push_as_is"]

logger = logging.getLogger("tidings.backplane.redis")


async def push_as_is(response: Any) -> Any:
    """A pub/sub push handler that hands the message on untouched.

    redis-py's default formats each push for a debug log (``getLogger``, which takes the
    logging lock, and ``str()`` of the whole message) even with debug logging off.
    """
    return response


class LinkWatchdog:
    """PINGs the pub/sub link after ``interval`` of silence; drops it after one more silent interval.

    Dropping disconnects the link, so its pending read fails and ``_run_link`` reconnects.
    """

    def __init__(self, link: AbstractConnection, interval: float, node_id: str) -> None:
        self.heard = 0  # replies read so far; the reader bumps it, the timer compares it
        self._link = link
        self._interval = interval
        self._node_id = node_id
        self._seen = 0
        self._pinged = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer = asyncio.get_running_loop().call_later(interval, self._check)

    def _check(self) -> None:
        if self.heard != self._seen:
            self._seen, self._pinged = self.heard, False
        elif not self._pinged:
            self._pinged = True
            ping = asyncio.get_running_loop().create_task(self._link.send_command("PING", check_health=False))
            self._tasks.add(ping)
            ping.add_done_callback(self._pinged_or_gone)
        else:
            logger.warning(
                "Redis pub/sub link silent: no answer to PING within %g s (node %s)",
                self._interval,
                self._node_id,
            )
            self._drop()
            return
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._check)

    def _pinged_or_gone(self, ping: asyncio.Task[None]) -> None:
        self._tasks.discard(ping)
        if not ping.cancelled() and ping.exception() is not None:
            self._drop()  # a PING that cannot be sent: the link is gone

    def _drop(self) -> None:
        self._timer.cancel()
        task = asyncio.get_running_loop().create_task(self._link.disconnect(nowait=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        self._timer.cancel()
