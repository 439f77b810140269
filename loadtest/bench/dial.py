"""Opening one connection and waiting for the server's answer to its first message, in one call.

:func:`dial` is what the ``connects`` scenario times and what the storm's clients reconnect with:
TCP connect, the WebSocket handshake (loadtest/fastws.py), one message, and a frame callback
until the answer; from the answer on, the caller's callbacks take the socket over in the very
callback that found it, so that no frame is missed. :func:`failure_reason` names a failure
briefly enough to count it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from loadtest.fastws import FastWebSocket, HandshakeError, OnClose, OnMessage, open_websocket

__all__ = ["Closed", "Refused", "dial", "failure_reason"]


class Closed(Exception):
    """The server closed the socket before answering."""

    def __init__(self, code: int) -> None:
        super().__init__(f"closed {code}")
        self.code = code


class Refused(Exception):
    """The server answered the connect with an error."""


async def dial(
    uri: str,
    subprotocol: str | None,
    message: str | bytes,
    accept: Callable[[FastWebSocket, bytes], Any],
    *,
    timeout: float,
    reply_timeout: float | None = None,
    then: Callable[[FastWebSocket], tuple[OnMessage, OnClose]] | None = None,
) -> tuple[FastWebSocket, float, Any]:
    """Open ``uri``, send ``message``, wait until ``accept`` finds the answer: (socket, when, answer).

    ``timeout`` bounds the TCP connect and the WebSocket handshake, ``reply_timeout`` (default: the
    same) the wait for the answer. ``then(ws)`` gives the socket's callbacks from the answer on; they
    are installed in the very callback that found it, so that no frame after it is missed. An answer
    that arrived as the deadline passed counts (the caller has already taken it into account).

    Raises:
        HandshakeError (e.g. ``HTTP 503``), OSError, TimeoutError, Closed, Refused.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[float, Any]] = loop.create_future()
    done.add_done_callback(_retrieved)  # a close after we gave up is no "exception never retrieved"
    ws = await open_websocket(uri, subprotocol, open_timeout=timeout)

    def on_message(frame: bytes, text: bool) -> None:
        if done.done():
            return
        try:
            answer = accept(ws, frame)
        except Exception as exc:
            done.set_exception(exc)
            return
        if answer is not None:
            done.set_result((time.perf_counter(), answer))
            if then is not None:
                ws.on_message, ws.on_close = then(ws)

    def on_close(code: int) -> None:
        if not done.done():
            done.set_exception(Closed(code))

    ws.on_message, ws.on_close = on_message, on_close
    ws.send(message)
    try:
        async with asyncio.timeout(timeout if reply_timeout is None else reply_timeout):
            at, answer = await done
    except TimeoutError:
        if done.done() and not done.cancelled() and done.exception() is None:
            return (ws, *done.result())
        ws.abort()
        raise
    except BaseException:
        ws.abort()
        raise
    return ws, at, answer


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def failure_reason(exc: BaseException) -> str:
    """A short, countable name for why a connection failed."""
    if isinstance(exc, HandshakeError):
        return str(exc)  # "HTTP 503", "connection lost during the handshake"
    if isinstance(exc, (Closed, Refused)):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return f"OSError {exc.errno}"
    return type(exc).__name__
