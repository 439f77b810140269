"""A real single node in the test's event loop: uvicorn on a pre-bound port-0 socket (no TestClient)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn

from tidings.server.cluster.backplane import Backplane
from tidings.server.config import Settings
from tidings.server.http.app import create_app
from tidings.server.transport.server import node_config

from .timing import UNIT

SECRET = "test-secret-which-is-long-enough-for-hs256"
API_KEY = "test-api-key"


@dataclass
class RunningNode:
    settings: Settings
    port: int
    server: uvicorn.Server

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def test_settings(**overrides: object) -> Settings:
    from tidings.server.config import Secret

    values: dict[str, object] = {
        "jwt_secret": Secret(SECRET),
        "api_keys": (Secret(API_KEY),),
        "connect_timeout": 2 * UNIT,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@contextlib.asynccontextmanager
async def run_node(settings: Settings, *, backplane: Backplane | None = None) -> AsyncIterator[RunningNode]:
    """Serve one node on a free port until the block ends."""
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only then (else Nagle + delayed ACK: ~40 ms per HTTP reply).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = node_config(create_app(settings, backplane=backplane), settings, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10 * UNIT):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("server stopped before it started")
                await asyncio.sleep(0.01)
        yield RunningNode(settings, sock.getsockname()[1], server)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10 * UNIT):
                await task
        if not task.done():
            task.cancel()
        sock.close()
