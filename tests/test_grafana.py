"""deploy/grafana/tidings.json queries only metrics a node exposes (issue 17, item 4).

Every ``tidings_*`` name in the dashboard's PromQL must be a series a live Redis-backed node shows
at ``/metrics``: a gauge by its name, a counter only as ``<name>_total``, a histogram only as
``<name>_bucket``, ``_sum`` or ``_count`` (Prometheus stores nothing under the bare name of
either). The families are read from the ``# TYPE`` lines, so a counter that has no sample yet
(``tidings_disconnects_total`` before the first close) still counts as exposed.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support.cluster import Cluster, start_cluster
from .support.timing import UNIT

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "tidings.json"
METRIC = re.compile(r"\btidings_[a-zA-Z0-9_]+")
SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL expression of the dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str | dict):
                yield from ([value] if isinstance(value, str) else [str(value.get("query", ""))])
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    return {name for expr in expressions(dashboard) for name in METRIC.findall(expr)}


def exposed_series(text: str) -> dict[str, str]:
    """Series name → family name, for every family declared by a ``# TYPE`` line.

    The Prometheus text format names a counter's TYPE line with ``_total`` (prometheus_client does),
    OpenMetrics without: both give the series ``<family>_total``.
    """
    series = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            family = name.removesuffix("_total") if kind == "counter" else name
            for suffix in SERIES_SUFFIXES.get(kind, ("",)):
                series[family + suffix] = family
    return series


def test_exposed_series_follow_prometheus_naming() -> None:
    text = "# TYPE a_total counter\n# TYPE b gauge\n# TYPE c histogram\n# TYPE d counter\n"
    assert exposed_series(text) == {
        "a_total": "a",
        "b": "b",
        "c_bucket": "c",
        "c_sum": "c",
        "c_count": "c",
        "d_total": "d",
    }


@pytest.fixture(scope="module")
def redis_node(redis_url: str) -> Iterator[Cluster]:
    with start_cluster(1, redis_url=redis_url, key_prefix=f"g-{uuid.uuid4().hex[:12]}") as running:
        yield running


def test_every_metric_the_dashboard_queries_exists(redis_node: Cluster) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = queried_metrics(dashboard)
    assert len(queried) >= 20, sorted(queried)  # the dashboard covers the node, not two or three names
    node = redis_node.nodes[0]
    with urllib.request.urlopen(f"{node.http_url}/metrics", timeout=10 * UNIT) as response:
        exposed = exposed_series(response.read().decode())
    missing = sorted(queried - set(exposed))
    assert missing == [], f"the dashboard queries series no node exposes: {missing}"
    # And the other way: every family a node exposes has a panel.
    families = set(exposed.values())
    shown = {exposed[name] for name in queried}
    assert sorted(families - shown) == []


def test_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tidings" and dashboard["title"] == "Tidings"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
