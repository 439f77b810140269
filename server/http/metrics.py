"""``GET /metrics``: the node's registry (``server/metrics.py``) in Prometheus text format."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from tidings.server.node import NodeState

__all__ = ["metrics_endpoint"]


async def metrics_endpoint(request: Request, state: NodeState) -> Response:
    """``GET /metrics`` (unauthenticated, like ``/healthz``: deploy/nginx.conf keeps it off the public listener)."""
    registry = state["metrics"]
    await registry.refresh()
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
