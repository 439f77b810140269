"""The Host check (trusted_host.py) on a real node: DNS rebinding is refused over HTTP and WebSocket."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from websockets.exceptions import InvalidStatus

from loadtest.protocol_client import ProtocolClient

from .support.node import API_KEY, RunningNode, run_node
from .support.node import test_settings as node_settings
from .support.timing import UNIT

Token = Callable[..., str]

FOREIGN = ("evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}", "localhost.:{port}")
LOOPBACK = ("127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}")


async def ws_status(node: RunningNode, host: str, token: str) -> int:
    """101 when a WebSocket with this Host header opens and takes ``connect``, else the HTTP status."""
    try:
        async with ProtocolClient.connecting(
            f"ws://{host}/ws", timeout=5 * UNIT, host="127.0.0.1", port=node.port
        ) as client:
            assert "result" in await client.call("connect", token=token)
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_dev_mode_answers_loopback_hosts_only(token: Token) -> None:
    """A dev node (API open, tokens for anyone) refuses a Host that is not loopback: 400, and no token."""
    async with (
        run_node(node_settings(dev=True, api_keys=())) as node,
        httpx.AsyncClient(base_url=node.http_url, timeout=5 * UNIT) as http,
    ):
        for template in FOREIGN:
            host = template.format(port=node.port)
            response = await http.post("/api/dev/token", json={"user": "mallory"}, headers={"host": host})
            assert response.status_code == 400, host
            assert "host" in response.json()["error"]["message"].lower()
            response = await http.post(
                "/api/publish", json={"channel": "broadcast", "data": "x"}, headers={"host": host}
            )
            assert response.status_code == 400, host
            assert (await http.get("/", headers={"host": host})).status_code == 400
        history = await http.get("/api/channels/broadcast/history")
        assert history.status_code == 200 and history.json()["offset"] == 0  # nothing was published
        for template in LOOPBACK:
            host = template.format(port=node.port)
            response = await http.post("/api/dev/token", json={"user": "alice"}, headers={"host": host})
            assert response.status_code == 200, host


async def test_dev_mode_refuses_a_websocket_with_a_foreign_host(token: Token) -> None:
    """The Host check guards /ws too: the handshake gets HTTP 403, the node carries on."""
    async with run_node(node_settings(dev=True)) as node:
        for template in FOREIGN:
            assert await ws_status(node, template.format(port=node.port), token("alice")) == 403
        for template in LOOPBACK:
            assert await ws_status(node, template.format(port=node.port), token("alice")) == 101


async def test_allowed_hosts_are_the_only_hosts_answered(token: Token) -> None:
    """TIDINGS_ALLOWED_HOSTS replaces the default in any mode; health probes answer any Host."""
    settings = node_settings(allowed_hosts=("chat.example", "*.example.org"))
    async with (
        run_node(settings) as node,
        httpx.AsyncClient(base_url=node.http_url, timeout=5 * UNIT) as http,
    ):
        for host, status in (
            ("chat.example", 200),
            ("a.example.org", 200),
            ("127.0.0.1", 400),
            ("example.org", 400),
        ):
            response = await http.get(
                "/api/channels/room:a/history", headers={"host": host, "authorization": f"Bearer {API_KEY}"}
            )
            assert response.status_code == status, host
            assert await ws_status(node, host, token("alice")) == (101 if status == 200 else 403)
        for probe in ("/healthz", "/readyz"):
            assert (await http.get(probe, headers={"host": "10.1.2.3:8000"})).status_code == 200


async def test_outside_dev_mode_any_host_is_answered_by_default(token: Token) -> None:
    """Without dev mode the API needs a key and /ws a token, so the default answers any Host."""
    async with (
        run_node(node_settings()) as node,
        httpx.AsyncClient(base_url=node.http_url, timeout=5 * UNIT) as http,
    ):
        response = await http.get("/api/channels/room:a/history", headers={"host": "chat.example"})
        assert response.status_code == 401  # past the Host check, stopped by the API key
        assert await ws_status(node, "chat.example", token("alice")) == 101
