"""Keeping the pub/sub link honest: a timer that notices silence.

The link's reader must stay lean (every publication of every subscribed channel passes
through it), so silence is watched by one timer per link instead of a timeout around
every read.
"""

from __future__ import annotations

import asyncio
import logging

from tidings.server.cluster.backplane.resp import RespConnection
from tidings.server.cluster.redis_errors import REDIS_ERRORS

__all__ = ["LinkWatchdog"]

logger = logging.getLogger("tidings.backplane.redis")


class LinkWatchdog:
    """PINGs the pub/sub link after ``interval`` of silence; drops it after one more silent interval.

    Dropping aborts the connection, so the link's wait for its end returns and it reconnects.
    """

    def __init__(self, link: RespConnection, interval: float, node_id: str) -> None:
        self.heard = 0  # replies read so far; the reader bumps it, the timer compares it
        self._link = link
        self._interval = interval
        self._node_id = node_id
        self._seen = 0
        self._pinged = False
        self._timer = asyncio.get_running_loop().call_later(interval, self._check)

    def _check(self) -> None:
        if self.heard != self._seen:
            self._seen, self._pinged = self.heard, False
        elif not self._pinged:
            self._pinged = True
            try:
                self._link.write([("PING",)])
            except REDIS_ERRORS:
                self._drop()  # a PING that cannot be sent: the link is gone
                return
        else:
            logger.warning(
                "Redis pub/sub link silent: no answer to PING within %g s (node %s)",
                self._interval,
                self._node_id,
            )
            self._drop()
            return
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._check)

    def _drop(self) -> None:
        self._timer.cancel()
        self._link.abort()

    def stop(self) -> None:
        self._timer.cancel()
