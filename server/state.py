"""The lifespan state of a node: what every request and connection reaches through ``scope["state"]``."""

from __future__ import annotations

import asyncio
from typing import TypedDict

from .backplane import Backplane
from .commands import CommandRunner
from .config import Settings
from .control import ControlPlane
from .hub import Hub
from .jobs import JobQueue, JobWorker
from .notifications import Notifier
from .presence import Presence
from .rooms import CachedRooms

__all__ = ["NodeState"]


class NodeState(TypedDict):
    settings: Settings
    backplane: Backplane
    hub: Hub
    runner: CommandRunner
    presence: Presence
    rooms: CachedRooms
    control: ControlPlane
    notifier: Notifier
    jobs: JobQueue
    job_worker: JobWorker | None  # None: TIDINGS_JOBS=off
    draining: asyncio.Event  # set on shutdown: /readyz fails and new sockets are refused
