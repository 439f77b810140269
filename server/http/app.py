"""The ASGI application of one node: WebSocket gateway at ``/ws``, HTTP API, web UI at ``/``, ops page at ``/admin``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.server.cluster.backplane import Backplane
from tidings.server.config import ConfigError, Secret, Settings
from tidings.server.http.notify_routes import notification_routes
from tidings.server.http.openapi import openapi_routes
from tidings.server.http.routes import routes
from tidings.server.http.trusted_host import TrustedHost
from tidings.server.node import NodeState, start_node
from tidings.server.transport.admission import serve_gateway

__all__ = ["create_app", "prepare_settings"]

logger = logging.getLogger("tidings.app")

_SHUTDOWN_TIMEOUT = 3.0  # seconds for the lifespan to stop the backplane, heartbeat and jobs


def prepare_settings(settings: Settings) -> Settings:
    """Fill in what dev mode may invent, and refuse what a node cannot run without.

    Raises:
        ConfigError: no way to verify tokens outside dev mode.
    """
    if settings.jwt_secret is None and settings.jwt_public_key is None:
        if not settings.dev:
            raise ConfigError(
                "set TIDINGS_JWT_SECRET or TIDINGS_JWT_PUBLIC_KEY (or TIDINGS_DEV=1 for a demo)"
            )
        settings = dataclasses.replace(settings, jwt_secret=Secret(secrets.token_urlsafe(32)))
    return settings


class _WebSocketGateway:
    """Routes ``/ws`` straight to the connection driver with uvicorn's own ``send``.

    It sits outside Starlette's exception middleware, which would wrap ``send`` in
    one more coroutine per frame on the hot path.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself (see TrustedHost): no frame of its own for a connection's life.
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            state: NodeState = scope["state"]
            # Refused with HTTP 503 while draining or full, so a load balancer retries another node.
            return serve_gateway(scope, receive, send, state)
        return self.app(scope, receive, send)


def create_app(settings: Settings, *, backplane: Backplane | None = None) -> Starlette:
    """Build one node.

    Args:
        settings: the node's configuration (``Settings.from_env()`` in production).
        backplane: use this backplane instead of the one ``settings`` describe (tests).

    Raises:
        ConfigError: the settings cannot run a node.
    """
    settings = prepare_settings(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        stack = contextlib.AsyncExitStack()
        try:
            state = await start_node(settings, stack, backplane=backplane)
            logger.info("node %s ready (%s backplane)", settings.node_id, type(state["backplane"]).__name__)
            try:
                yield dict(state)
            finally:
                state["draining"].set()
        finally:
            # Stopping must not hang the exit (a drain promises to end within its timeout): whatever
            # is still waiting on Redis after this is abandoned; nothing a node holds needs saving.
            try:
                async with asyncio.timeout(_SHUTDOWN_TIMEOUT):
                    await stack.aclose()
            except TimeoutError:
                logger.warning("node parts did not stop within %.0f s; exiting anyway", _SHUTDOWN_TIMEOUT)

    web_dir = Path(str(files("tidings.web")))

    async def admin_page(request: Request) -> Response:
        # The ops page's own address; the page is static and asks the API (with the key) for everything.
        return FileResponse(web_dir / "admin.html")

    return Starlette(
        routes=[
            *routes(),
            *notification_routes(),
            *openapi_routes(),
            Route("/admin", admin_page, methods=["GET", "HEAD"]),
            Mount("/", app=StaticFiles(directory=web_dir, html=True), name="web"),
        ],
        # The Host check comes first, so that it guards /ws too (the gateway routes it before Starlette).
        middleware=[
            Middleware(TrustedHost, allowed_hosts=settings.trusted_hosts()),
            Middleware(_WebSocketGateway),
        ],
        lifespan=lifespan,
    )
