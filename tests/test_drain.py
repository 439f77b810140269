"""Graceful drain of a real ``tidings serve`` process on SIGTERM (drain.py).

One node, in-memory backplane: what the node itself does. That clients then
recover on other nodes with nothing lost is shown with three nodes behind nginx
(tests/cluster/test_nginx.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from loadtest.protocol_client import ProtocolClient
from tidings.server.gateway.auth import issue_token

from .e2e.servers import E2E_JWT_SECRET, serve_node
from .support.timing import UNIT, wait_until


async def _connected(url: str, user: str) -> ProtocolClient:
    client = await ProtocolClient.open(url, timeout=5 * UNIT)
    await client.connect(issue_token(user, E2E_JWT_SECRET))
    return client


async def _told(client: ProtocolClient) -> tuple[float, int | None, list[dict[str, Any]]]:
    """When the node closed this socket, with which code, and what it said first."""
    code, seen = await client.closed(within=10 * UNIT)
    return time.monotonic(), code, seen


async def test_sigterm_drains_in_batches_then_exits_zero(tmp_path: Path) -> None:
    """SIGTERM: /readyz fails, new sockets get HTTP 503, clients get 4001 in paced batches, exit 0 in time."""
    env = {
        "TIDINGS_DRAIN_TIMEOUT": "8",
        "TIDINGS_DRAIN_BATCH_SIZE": "2",
        "TIDINGS_DRAIN_INTERVAL": "0.5",
        "TIDINGS_LOG_FORMAT": "json",
    }
    with serve_node("draining", tmp_path, env=env, log_level="info") as node:
        clients = [await _connected(node.ws_url, f"user{i}") for i in range(6)]
        watchers = [asyncio.create_task(_told(client)) for client in clients]
        sent = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient(base_url=node.http_url, timeout=2 * UNIT) as http:

            async def not_ready() -> bool:
                return (await http.get("/readyz")).status_code == 503

            await wait_until(not_ready, what="/readyz to fail while draining")
            assert (await http.get("/healthz")).status_code == 200  # alive, just not ready
            with pytest.raises(InvalidStatus) as caught:
                async with connect(node.ws_url, open_timeout=5 * UNIT):
                    pass
            assert caught.value.response.status_code == 503
        results = await asyncio.gather(*watchers)
        await asyncio.to_thread(node.process.wait, 10 * UNIT)
        exited = time.monotonic()
    assert node.process.returncode == 0
    assert exited - sent < 8 + 2 * UNIT  # TIDINGS_DRAIN_TIMEOUT, plus process start-up noise
    for _, code, seen in results:
        assert code == 4001
        assert seen[-1] == {
            "push": "disconnect",
            "code": 4001,
            "reason": "node shutting down, reconnect",
            "reconnect": True,
        }
    # Three batches of two, 0.5 s apart (1 s from first to last): never all at once. Measured on the
    # client side, so allow for the test's own loop being busy when the first close arrived.
    times = sorted(when for when, _, _ in results)
    assert times[-1] - times[0] >= 0.5
    # Structured logs: one JSON object per line, each stamped with the node id.
    lines = [json.loads(line) for line in node.log.read_text().splitlines() if line.strip()]
    assert lines and all(line["node"] == "draining" for line in lines)
    assert any(
        line["logger"] == "tidings.drain" and "6 told to reconnect" in line["message"] for line in lines
    )
    assert not any(line["level"] == "error" or "exc" in line for line in lines)
