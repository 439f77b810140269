"""The Host header check in front of everything a node serves, HTTP and WebSocket alike.

It is Starlette's ``TrustedHostMiddleware`` with the same patterns (origins.py), made
to refuse a WebSocket handshake cleanly: ``websocket.close`` before accept, which the
server answers with HTTP 403 (Starlette's would send a denial response, which uvicorn's
sansio protocol logs as an ERROR for every refusal; see admission.py). HTTP requests
get 400 with the API's JSON error body.

The liveness and readiness probes are answered whatever the Host: container and load
balancer health checks address a node by its IP, and the probes change nothing and
reveal only the node id.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable

from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.server.gateway.origins import host_allowed

__all__ = ["TrustedHost"]

_PROBES = frozenset({"/healthz", "/readyz"})


class TrustedHost:
    """ASGI middleware: requests whose Host matches none of ``allowed_hosts`` never reach ``app``."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.allow_any = "*" in allowed_hosts

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: it hands back the app's, so a WebSocket's whole life does not
        # keep one more suspended frame (memory per idle connection, BENCHMARKS.md round 2).
        if (
            self.allow_any
            or scope["type"] not in ("http", "websocket")
            or (scope["type"] == "http" and scope["path"] in _PROBES)
            or host_allowed(_host_header(scope), self.allowed_hosts)
        ):
            return self.app(scope, receive, send)
        return self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: an HTTP 403
            return
        message = "Host header is not an allowed host (TIDINGS_ALLOWED_HOSTS)"
        body = json.dumps({"error": {"code": 400, "message": message}}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _host_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"host":
            return bytes(value).decode("latin-1")
    return None
