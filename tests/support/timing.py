"""One test time unit, scaled by TESTS_TIMEOUT_FACTOR (websockets' MS idea): every wait has a deadline."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

UNIT = float(os.environ.get("TESTS_TIMEOUT_FACTOR", "1"))  # seconds


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout: float = 5 * UNIT, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        await asyncio.sleep(0.02)


def wait_until_sync(
    predicate: Callable[[], bool], *, timeout: float = 5 * UNIT, what: str = "condition"
) -> None:
    """Blocking variant of :func:`wait_until` for fixtures that run outside the event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(0.02)
