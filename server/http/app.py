"""The ASGI application of one node: WebSocket gateway at ``/ws``, HTTP API, web UI at ``/``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.server.cluster.backplane import Backplane, Publication
from tidings.server.cluster.backplane.memory import InMemoryBackplane
from tidings.server.cluster.control import ControlPlane
from tidings.server.cluster.liveness import NodeLiveness, new_incarnation
from tidings.server.cluster.metrics import backplane_metrics
from tidings.server.cluster.presence import Presence
from tidings.server.cluster.presence_memory import InMemoryPresence
from tidings.server.cluster.presence_redis import RedisPresence
from tidings.server.cluster.rooms import CachedRooms
from tidings.server.cluster.rooms_memory import InMemoryRooms
from tidings.server.cluster.rooms_redis import RedisRooms
from tidings.server.config import ConfigError, Secret, Settings
from tidings.server.gateway.auth import TokenVerifier
from tidings.server.gateway.commands import CommandRunner
from tidings.server.gateway.connection import Gateway
from tidings.server.gateway.hub import Hub
from tidings.server.gateway.metrics import gateway_metrics
from tidings.server.http.metrics import node_metrics
from tidings.server.http.notify_routes import notification_routes
from tidings.server.http.routes import routes
from tidings.server.http.trusted_host import TrustedHost
from tidings.server.jobs.metrics import JobMetrics
from tidings.server.metrics import MetricsRegistry
from tidings.server.node import NodeState
from tidings.server.notify.metrics import notifier_metrics
from tidings.server.notify.notifier import start_notifications
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


def make_backplane(settings: Settings) -> Backplane:
    """The backplane the settings ask for: Redis when ``redis_url`` is set, else in memory."""
    if settings.redis_url is None:
        return InMemoryBackplane(node_id=settings.node_id, policies=settings.history_policies())
    from tidings.server.cluster.backplane.redis import RedisBackplane  # imported only for a cluster node

    return RedisBackplane(
        settings.redis_url,
        node_id=settings.node_id,
        key_prefix=settings.key_prefix,
        policies=settings.history_policies(),
    )


async def start_node(
    settings: Settings, stack: contextlib.AsyncExitStack, *, backplane: Backplane | None = None
) -> NodeState:
    """Start every part of a node; ``stack`` stops them in reverse order."""
    node_backplane = backplane if backplane is not None else make_backplane(settings)
    redis_client = None
    if settings.redis_url is not None:
        # A bounded pool that makes callers wait for a free connection (up to the timeout) instead of
        # failing: a thousand sockets closing at once must not open a thousand Redis connections.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=64,
            timeout=5.0,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
        )
        redis_client = aioredis.Redis(connection_pool=pool)
        stack.push_async_callback(pool.disconnect)
        stack.push_async_callback(redis_client.aclose)
    incarnation = new_incarnation(settings.node_id)  # this process, distinct from any restart under the id
    presence: Presence = (
        RedisPresence(redis_client, key_prefix=settings.key_prefix, incarnation=incarnation)
        if redis_client
        else InMemoryPresence()
    )
    rooms = CachedRooms(
        RedisRooms(redis_client, key_prefix=settings.key_prefix) if redis_client else InMemoryRooms()
    )
    hub = Hub(node_backplane)
    verifier = TokenVerifier(
        secret=settings.jwt_secret.reveal() if settings.jwt_secret else None,
        public_key=settings.jwt_public_key,
    )
    runner = CommandRunner(settings, node_backplane, hub, verifier, presence, rooms)
    gateway = Gateway(settings, runner, runner.metrics)
    control = ControlPlane(node_backplane, hub, rooms, drop_subscription=runner.drop_subscription)

    def on_publication(publication: Publication) -> None:
        if publication.kind == "control":
            control.handle(publication)
        else:
            hub.deliver(publication)

    await node_backplane.start(on_publication)
    stack.push_async_callback(node_backplane.close)
    await control.start()
    # After the backplane: the stack stops the job worker first, while Redis and pub/sub still work.
    notifier, job_queue, job_worker = await start_notifications(settings, redis_client, node_backplane, stack)
    runner.notifier = notifier
    if redis_client is not None:
        liveness = NodeLiveness(
            redis_client,
            presence,
            key_prefix=settings.key_prefix,
            incarnation=incarnation,
            announce_leave=runner.announce_leave,
            on_revived=runner.readd_presence,
        )
        await liveness.start()
        stack.push_async_callback(liveness.stop)
    state: NodeState = {
        "settings": settings,
        "backplane": node_backplane,
        "hub": hub,
        "runner": runner,
        "gateway": gateway,
        "presence": presence,
        "rooms": rooms,
        "control": control,
        "notifier": notifier,
        "jobs": job_queue,
        "job_worker": job_worker,
        "draining": asyncio.Event(),
        "metrics": MetricsRegistry(),
    }
    registry = state["metrics"]
    registry.add_source(node_metrics(state))
    registry.add_source(backplane_metrics(node_backplane))
    registry.add_source(gateway_metrics(hub, runner.limits, runner.metrics))
    job_metrics = JobMetrics(job_queue, job_worker)
    registry.add_source(job_metrics.collect, refresh=job_metrics.refresh)
    registry.add_source(notifier_metrics(notifier))
    return state


class _WebSocketGateway:
    """Routes ``/ws`` straight to the connection driver with uvicorn's own ``send``.

    It sits outside Starlette's exception middleware, which would wrap ``send`` in
    one more coroutine per frame on the hot path.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            state: NodeState = scope["state"]
            # Refused with HTTP 503 while draining or full, so a load balancer retries another node.
            await serve_gateway(scope, receive, send, state)
            return
        await self.app(scope, receive, send)


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
    return Starlette(
        routes=[
            *routes(),
            *notification_routes(),
            Mount("/", app=StaticFiles(directory=web_dir, html=True), name="web"),
        ],
        # The Host check comes first, so that it guards /ws too (the gateway routes it before Starlette).
        middleware=[
            Middleware(TrustedHost, allowed_hosts=settings.trusted_hosts()),
            Middleware(_WebSocketGateway),
        ],
        lifespan=lifespan,
    )
