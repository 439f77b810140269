"""The run's chart and verdict file: latency over time, deliveries/s over time, loss per node pair.

The chart is a self-contained SVG written with nothing but the standard library
(any browser opens it; no plotting package to install). :func:`render_chart` is
pure; :func:`write_report` writes ``<stem>.svg`` and ``<stem>.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from .ledger import Verdict
from .series import TimeSeries

__all__ = ["render_chart", "summary", "write_report"]

_WIDTH = 960
_PANEL = 230
_LEFT, _RIGHT, _TOP = 70, 20, 40
_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


def summary(verdict: Verdict, series: TimeSeries) -> dict[str, Any]:
    """The verdict plus latency figures per kind of delivery, as one JSON-safe dict."""
    latency = {}
    for kind in series.kinds():
        histogram = series.overall(kind)
        latency[kind] = {
            "count": histogram.count,
            "p50_ms": round(histogram.quantile(0.5), 2),
            "p99_ms": round(histogram.quantile(0.99), 2),
            "max_ms": round(histogram.max, 2),
        }
    return {**verdict.encode(), "latency": latency}


def render_chart(verdict: Verdict, series: TimeSeries, *, title: str = "Tidings fan-out") -> str:
    """An SVG with three panels: latency (p50 and p99 per kind), deliveries/s per kind, loss per node pair."""
    seconds = sorted(series.seconds)
    start = seconds[0] if seconds else 0
    xs = [s - start for s in seconds]
    latency_lines: list[tuple[str, list[float]]] = []
    rate_lines: list[tuple[str, list[float]]] = []
    for kind in series.kinds():
        histograms = [series.seconds[s].get(kind) for s in seconds]
        latency_lines.append((f"{kind} p50", [h.quantile(0.5) if h else float("nan") for h in histograms]))
        latency_lines.append((f"{kind} p99", [h.quantile(0.99) if h else float("nan") for h in histograms]))
        rate_lines.append((kind, [float(h.count) if h else 0.0 for h in histograms]))
    rate_lines.append(("all", [float(sum(h.count for h in series.seconds[s].values())) for s in seconds]))
    labels = {node: f"n{i + 1}" for i, node in enumerate(verdict.nodes())}
    grid_height = 60 + 24 * (len(labels) + 1) + 20 * len(labels)
    height = _TOP + 2 * (_PANEL + 50) + grid_height
    verdict_text = "PASS" if verdict.ok else "FAIL: " + "; ".join(verdict.failures())
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{_WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{_LEFT}" y="22" font-size="16" font-weight="bold">{escape(title)}</text>',
        f'<text x="{_WIDTH - _RIGHT}" y="22" text-anchor="end" font-size="14" '
        f'fill="{"#2ca02c" if verdict.ok else "#d62728"}">{escape(verdict_text[:110])}</text>',
    ]
    parts += _line_panel(_TOP, "publish → receipt latency (ms) per second", xs, latency_lines)
    parts += _line_panel(_TOP + _PANEL + 50, "deliveries per second", xs, rate_lines)
    parts += _pair_grid(_TOP + 2 * (_PANEL + 50), verdict, labels)
    parts.append("</svg>")
    return "\n".join(parts)


def _line_panel(
    top: int, title: str, xs: Sequence[int], lines: Sequence[tuple[str, Sequence[float]]]
) -> list[str]:
    width = _WIDTH - _LEFT - _RIGHT
    finite = [v for _, values in lines for v in values if v == v]
    y_max = _nice(max(finite, default=1.0) or 1.0)
    x_max = max(xs[-1] if xs else 1, 1)
    bottom = top + _PANEL
    plot = _PANEL - 60  # the title and legend rows stay above the plot

    def point(x: float, y: float) -> str:
        return f"{_LEFT + x / x_max * width:.1f},{bottom - y / y_max * plot:.1f}"

    parts = [
        f'<text x="{_LEFT}" y="{top + 14}" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{_LEFT}" y1="{bottom}" x2="{_LEFT + width}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{_LEFT}" y1="{bottom - plot}" x2="{_LEFT}" y2="{bottom}" stroke="black"/>',
    ]
    for i in range(6):
        value = y_max * i / 5
        y = bottom - value / y_max * plot
        parts.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + width}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(value)}</text>')
    for i in range(6):
        x = x_max * i / 5
        parts.append(
            f'<text x="{_LEFT + x / x_max * width:.1f}" y="{bottom + 16}" text-anchor="middle">{x:.0f} s</text>'
        )
    for n, (name, values) in enumerate(lines):
        # p50 and p99 of one kind share a colour; p50 is dashed.
        kind_index = n // 2 if name.endswith(("p50", "p99")) else n
        colour = _COLOURS[kind_index % len(_COLOURS)]
        dashed = ' stroke-dasharray="5,3"' if name.endswith("p50") else ""
        segments: list[list[str]] = [[]]
        for x, y in zip(xs, values, strict=True):
            if y == y:
                segments[-1].append(point(x, y))
            elif segments[-1]:
                segments.append([])
        for segment in segments:
            if len(segment) == 1:
                cx, cy = segment[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            elif segment:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dashed} points="{" ".join(segment)}"/>'
                )
        legend_x = _LEFT + 10 + (n % 4) * 210
        legend_y = top + 34 + (n // 4) * 16
        parts.append(
            f'<line x1="{legend_x}" y1="{legend_y - 4}" x2="{legend_x + 18}" y2="{legend_y - 4}" '
            f'stroke="{colour}" stroke-width="2"{dashed}/>'
        )
        parts.append(f'<text x="{legend_x + 24}" y="{legend_y}">{escape(name)}</text>')
    return parts


def _pair_grid(top: int, verdict: Verdict, labels: dict[str, str]) -> list[str]:
    parts = [
        f'<text x="{_LEFT}" y="{top + 14}" font-weight="bold">loss per node pair (publisher ↓, receiver →): '
        "lost / expected, + duplicates</text>"
    ]
    nodes = list(labels)
    cell_w, cell_h = 150, 24
    x0, y0 = _LEFT + 60, top + 30
    for j, node in enumerate(nodes):
        parts.append(
            f'<text x="{x0 + j * cell_w + cell_w / 2}" y="{y0 + 16}" text-anchor="middle">{labels[node]}</text>'
        )
    for i, publisher in enumerate(nodes):
        y = y0 + (i + 1) * cell_h
        parts.append(f'<text x="{x0 - 10}" y="{y + 16}" text-anchor="end">{labels[publisher]}</text>')
        for j, receiver in enumerate(nodes):
            stats = verdict.pairs.get((publisher, receiver))
            x = x0 + j * cell_w
            if stats is None:
                fill, text = "#f4f4f4", "-"
            else:
                bad = stats.lost or stats.duplicates
                fill = "#f8c4c4" if bad else "#c8ecc8"
                text = f"{stats.lost} / {stats.expected}" + (
                    f" +{stats.duplicates}" if stats.duplicates else ""
                )
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{fill}" stroke="#999"/>'
            )
            parts.append(
                f'<text x="{x + cell_w / 2}" y="{y + 16}" text-anchor="middle">{escape(text)}</text>'
            )
    legend_top = y0 + (len(nodes) + 1) * cell_h + 16
    for i, (node, label) in enumerate(labels.items()):
        parts.append(f'<text x="{_LEFT}" y="{legend_top + i * 20}">{label} = {escape(node)}</text>')
    return parts


def _nice(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (an axis maximum)."""
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.2g}"


def write_report(
    directory: str | Path, verdict: Verdict, series: TimeSeries, *, title: str = "Tidings fan-out"
) -> tuple[Path, Path]:
    """Write ``tidings-<time>.svg`` (the chart) and ``tidings-<time>.json`` (the verdict); return both paths."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"tidings-{time.strftime('%Y%m%d-%H%M%S')}"
    svg, data = stem.with_suffix(".svg"), stem.with_suffix(".json")
    svg.write_text(render_chart(verdict, series, title=title), encoding="utf-8")
    data.write_text(json.dumps({"title": title, **summary(verdict, series)}, indent=1), encoding="utf-8")
    return svg, data
