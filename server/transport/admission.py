"""Who may open a WebSocket on this node right now: not while draining, not past the node's limit.

A refused handshake is answered with a plain HTTP 503 (the ASGI
``websocket.http.response`` extension), not a WebSocket close: a load balancer
then tries another node for the same request (nginx ``proxy_next_upstream
http_503``) and the client never notices; a client connecting directly sees
the handshake fail and backs off.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from tidings.server.gateway.connection import serve_websocket

if TYPE_CHECKING:
    from tidings.server.node import NodeState

__all__ = ["refuse_websocket", "serve_gateway"]


async def refuse_websocket(scope: Scope, send: Send, status: int, message: str) -> None:
    """Refuse a WebSocket handshake with HTTP ``status`` (403 where the server lacks the extension)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = message.encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"retry-after", b"1"),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
        # uvicorn's websockets-sansio protocol (0.3x) forgets that a denial response ends the handshake
        # and logs "ASGI callable returned without completing handshake" at ERROR for every refusal.
        # Minor layering violation, as in connection.py: its ASGI send is a bound method of that protocol.
        protocol = getattr(send, "__self__", None)
        if getattr(protocol, "handshake_complete", True) is False:
            protocol.handshake_complete = True  # type: ignore[union-attr]
        return
    await send({"type": "websocket.close", "code": 1013})  # "try again later"; uvicorn answers 403


def serve_gateway(scope: Scope, receive: Receive, send: Send, state: NodeState) -> Awaitable[None]:
    """Serve one ``/ws`` connection unless the node drains or is full (then HTTP 503).

    Not a coroutine itself: it decides, then hands back the coroutine that refuses or serves,
    so a connection's whole life keeps no frame of it (memory per idle connection). The socket
    counted by ``open_socket`` is given back when that coroutine ends, however it ends.
    """
    limits = state["runner"].limits
    if state["draining"].is_set():
        return refuse_websocket(scope, send, 503, "node is shutting down")
    if not limits.open_socket():
        return refuse_websocket(scope, send, 503, "node is at its connection limit")
    if not limits.begin_handshake():  # a connect storm: shed what cannot be served soon
        return _then(
            refuse_websocket(scope, send, 503, "node is busy with connects; retry shortly"),
            limits.close_socket,
        )
    return serve_websocket(
        scope, receive, send, state["gateway"], connected=limits.end_handshake, ended=limits.close_socket
    )


async def _then(refusal: Awaitable[None], done: Callable[[], None]) -> None:
    try:
        await refusal
    finally:
        done()
