"""``GET /metrics``: the node's registry (``server/metrics.py``) in Prometheus text format."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import Metric
from starlette.requests import Request
from starlette.responses import Response

from tidings.server.metrics import MetricSource, gauge
from tidings.server.node import NodeState

__all__ = ["metrics_endpoint", "node_metrics"]


def node_metrics(state: NodeState) -> MetricSource:
    """The node as a whole: its id, and whether it drains."""

    def collect() -> Iterator[Metric]:
        node = state["settings"].node_id
        yield gauge("tidings_up", "1 while the node runs; labelled with its id.", 1, node=node)
        yield gauge(
            "tidings_draining", "1 while the node drains before exit.", int(state["draining"].is_set())
        )

    return collect


async def metrics_endpoint(request: Request, state: NodeState) -> Response:
    """``GET /metrics`` (unauthenticated, like ``/healthz``: deploy/nginx.conf keeps it off the public listener)."""
    registry = state["metrics"]
    await registry.refresh()
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
