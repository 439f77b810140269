"""The lifespan state of a node: what every request and connection reaches through ``scope["state"]``."""

from __future__ import annotations

import asyncio
from typing import TypedDict

from tidings.server.cluster.backplane import Backplane
from tidings.server.cluster.control import ControlPlane
from tidings.server.cluster.presence import Presence
from tidings.server.cluster.rooms import CachedRooms
from tidings.server.config import Settings
from tidings.server.gateway.commands import CommandRunner
from tidings.server.gateway.connection import Gateway
from tidings.server.gateway.hub import Hub
from tidings.server.jobs.queue import JobQueue
from tidings.server.jobs.worker import JobWorker
from tidings.server.metrics import MetricsRegistry
from tidings.server.notify.notifier import Notifier

__all__ = ["NodeState"]


class NodeState(TypedDict):
    settings: Settings
    backplane: Backplane
    hub: Hub
    runner: CommandRunner
    gateway: Gateway  # what serve_websocket needs of the node (settings, commands, client ids, flusher)
    presence: Presence
    rooms: CachedRooms
    control: ControlPlane
    notifier: Notifier
    jobs: JobQueue
    job_worker: JobWorker | None  # None: TIDINGS_JOBS=off
    draining: asyncio.Event  # set on shutdown: /readyz fails and new sockets are refused
    metrics: MetricsRegistry  # what /metrics shows: each part registered its own source
