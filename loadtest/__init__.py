"""Load tests for Tidings: locust users with a fan-out verifier, and a lean asyncio fan-out benchmark.

loadtest/locustfile.py   locust users (chat, broadcast, notifications, reconnect storm)
loadtest/fanout.py       the benchmark: deliveries/s, latency, loss, server CPU and RSS from /proc
loadtest/ledger.py       PURE: who should have received what, and who did (loss, duplicates per node pair)
loadtest/series.py       PURE: mergeable latency histograms and per-second time series
loadtest/report.py       the chart (SVG) and the verdict file
loadtest/procstat.py     /proc readers: node pids, CPU seconds, RSS
loadtest/wsclient.py     a blocking, gevent-friendly protocol client for locust
"""

from __future__ import annotations

__all__: list[str] = []
