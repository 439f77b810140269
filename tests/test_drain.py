"""Graceful drain of a real ``tidings serve`` process on SIGTERM (drain.py).

One node, in-memory backplane: what the node itself does. That clients then
recover on other nodes with nothing lost is shown with three nodes behind nginx
(tests/cluster/test_nginx.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WebSocketClosed
from websockets.exceptions import InvalidStatus

from tidings.server.auth import issue_token
from tidings.server.protocol import Codec

from .e2e.servers import E2E_JWT_SECRET
from .support.ports import free_port
from .support.timing import UNIT, wait_until, wait_until_sync


@dataclass
class Served:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@contextlib.contextmanager
def serve_node(node_id: str, log_dir: Path, *, env: dict[str, str], log_level: str) -> Iterator[Served]:
    """``tidings serve`` as a child process (its log level is part of what is tested), stopped by pid."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
    environ.update(TIDINGS_JWT_SECRET=E2E_JWT_SECRET, TIDINGS_NODE_ID=node_id, **env)
    port = free_port()
    log_path = log_dir / f"{node_id}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tidings.server", "serve", "--port", str(port), "--log-level", log_level],
            env=environ, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    node = Served(port, process, log_path)

    def ready() -> bool:
        assert process.poll() is None, log_path.read_text()
        try:
            with urllib.request.urlopen(f"{node.http_url}/healthz", timeout=UNIT) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until_sync(ready, timeout=15 * UNIT, what="the node to answer /healthz")
        yield node
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15 * UNIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5 * UNIT)


async def _connected(url: str, user: str) -> ClientConnection:
    ws = await connect(url, open_timeout=5 * UNIT, close_timeout=UNIT)
    await ws.send(Codec.JSON.encode({"id": 1, "op": "connect", "token": issue_token(user, E2E_JWT_SECRET)}))
    async with asyncio.timeout(5 * UNIT):
        reply = Codec.JSON.split(await ws.recv())[0]
    assert "result" in reply, reply
    return ws


async def _told(ws: ClientConnection) -> tuple[float, int | None, list[dict[str, Any]]]:
    """When the node closed this socket, with which code, and what it said first."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10 * UNIT):
        try:
            while True:
                seen.extend(Codec.JSON.split(await ws.recv()))
        except WebSocketClosed as exc:
            return time.monotonic(), (exc.rcvd.code if exc.rcvd else None), seen


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
        watchers = [asyncio.create_task(_told(ws)) for ws in clients]
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
    lines = [json.loads(line) for line in node.log_path.read_text().splitlines() if line.strip()]
    assert lines and all(line["node"] == "draining" for line in lines)
    assert any(
        line["logger"] == "tidings.drain" and "6 told to reconnect" in line["message"] for line in lines
    )
    assert not any(line["level"] == "error" or "exc" in line for line in lines)
