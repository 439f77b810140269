"""Tidings Python SDK.

* :class:`Connection`: a WebSocket client that reconnects on its own (backoff with
  full jitter, over a list of node URLs) and resumes every channel with ``since``,
  so its user sees each publication once, in order, across node failures.
* :class:`Publisher` / :class:`AsyncPublisher`: the HTTP API for backend services.
* :class:`RedisEmitter`: publish and notify straight through the cluster's Redis.
"""

from __future__ import annotations

from .connection import CallError, Connection, ConnectionClosed
from .emitter import RedisEmitter
from .publisher import AsyncPublisher, Publisher, PublishError

__all__ = [
    "AsyncPublisher",
    "CallError",
    "Connection",
    "ConnectionClosed",
    "PublishError",
    "Publisher",
    "RedisEmitter",
]
