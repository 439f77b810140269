"""uvicorn's websockets-sansio protocol with lighter per-connection state.

DESIGN.md "Performance shape": memory per idle connection is part of the bar
(≤ 20 KiB). uvicorn gives every connection an ``asyncio.Queue`` for the ASGI
receive events and an ``asyncio.Event`` for write flow control; with their
four ``collections.deque`` (about 620 bytes each, however empty) they weigh
about 4 KiB, a fifth of the budget. Only uvicorn's own protocol methods and the
app's single reader task use them, through five methods, so this subclass gives
it two small equivalents and changes nothing else.

Pass :class:`LeanWebSocketProtocol` as uvicorn's ``ws`` setting.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["LeanWebSocketProtocol", "Mailbox", "WritableFlag"]


class Mailbox:
    """The ASGI receive queue of one connection, as much of ``asyncio.Queue`` as uvicorn uses.

    Guarantees: items come out in the order they were put; ``put_nowait`` never
    blocks or fails; ``get`` waits while empty. One reader at a time (the ASGI app's
    task); a second concurrent ``get`` raises RuntimeError rather than lose a wake-up.
    The queue stays short: uvicorn pauses reading the socket while an event waits.
    """

    __slots__ = ("_getter", "_items")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._getter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            if self._getter is not None:
                raise RuntimeError("Mailbox.get: another task is already waiting")
            getter = self._getter = asyncio.get_running_loop().create_future()
            try:
                await getter
            finally:
                self._getter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class WritableFlag:
    """Write flow control, as much of ``asyncio.Event`` as uvicorn uses; starts set (writable)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None  # created only while someone waits

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with :class:`Mailbox` and :class:`WritableFlag` inside."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Mailbox()  # type: ignore[assignment]
        self.writable = WritableFlag()  # type: ignore[assignment]
