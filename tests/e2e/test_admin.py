"""The ops page (/admin) in real Chromium against a real 3-node cluster on Valkey (issue 17, item 3).

The page asks for the API key (the cluster has one), then lists the three nodes with their numbers,
draws publications and deliveries per second, shows the job queue, disconnects a real WebSocket
client on another node, and loses a node killed with SIGKILL within 10 s (liveness TTL 5 s plus
one poll). A dev node without keys opens the page without asking.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from playwright.sync_api import Page, expect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from ..support.cluster import Cluster, NodeProcess, start_cluster
from ..support.node import API_KEY, SECRET
from ..support.timing import UNIT
from .backend import publish

pytestmark = pytest.mark.cluster

EXPECT_MS = int(10_000 * UNIT)
SCREENSHOT = Path("/tmp/admin.png")


@pytest.fixture
def cluster(redis_url: str) -> Iterator[Cluster]:
    env = {"TIDINGS_DEV": "1", "TIDINGS_ALLOWED_ORIGINS": "*"}
    with start_cluster(3, redis_url=redis_url, key_prefix=f"e2e-{uuid.uuid4().hex[:12]}", env=env) as running:
        yield running


@pytest.fixture
def admin(browser, artifacts: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    (artifacts / "admin.png").write_bytes(page.screenshot(full_page=True))
    context.close()
    assert errors == [], errors


@contextlib.contextmanager
def ws_client(node: NodeProcess, user: str, channel: str) -> Iterator[ClientConnection]:
    """A real WebSocket client of ``node``, signed in as ``user`` and subscribed to ``channel``."""
    token = jwt.encode({"sub": user, "exp": time.time() + 600}, SECRET, algorithm="HS256")
    with connect(node.ws_url, open_timeout=10 * UNIT) as ws:
        ws.send(json.dumps({"id": 1, "op": "connect", "token": token, "subscribe": [{"channel": channel}]}))
        reply = json.loads(str(ws.recv(timeout=10 * UNIT)).splitlines()[0])  # a frame may carry several
        assert reply.get("id") == 1 and "error" not in reply, reply
        yield ws


def row(page: Page, node_id: str):
    return page.locator(f"#nodes tbody tr[data-node='{node_id}']")


def numbers(page: Page, node_id: str) -> list[str]:
    return row(page, node_id).locator("td").all_inner_texts()


def test_admin_page_on_a_three_node_cluster(cluster, admin):
    node1, node2, node3 = cluster.nodes
    with ws_client(node2, "bob", "room:ops") as bob, ws_client(node3, "carol", "room:ops"):
        admin.goto(f"{node1.http_url}/admin")
        expect(admin.locator("#key-form")).to_be_visible(timeout=EXPECT_MS)  # the cluster has an API key
        admin.fill("#key-input", API_KEY)
        admin.get_by_role("button", name="Open").click()

        rows = admin.locator("#nodes tbody tr")
        expect(rows).to_have_count(3, timeout=EXPECT_MS)
        expect(admin.locator("#key-form")).to_be_hidden()
        expect(admin.locator("#node-count")).to_have_text("(3 alive)")
        # node-2 and node-3 each hold one connection, subscribed to room:ops and its user's own channel
        # (read from their heartbeats).
        for node_id in ("node-2", "node-3"):
            expect(row(admin, node_id).locator("td").nth(1)).to_have_text("1", timeout=EXPECT_MS)
            expect(row(admin, node_id).locator("td").nth(2)).to_have_text("2")
            expect(row(admin, node_id).locator("td").nth(3)).to_have_text("2")
        expect(row(admin, "node-1").locator("td").nth(1)).to_have_text("0")

        # Publications flow: the charts draw cluster-wide rates computed from counter deltas.
        chart_max = "s => Number(document.querySelector(s).dataset.max || 0)"
        deadline = time.monotonic() + 10 * UNIT
        # Each node's counters are as of its last heartbeat: publish until both charts have moved.
        while (
            min(admin.evaluate(chart_max, chart) for chart in ("#chart-publications", "#chart-deliveries"))
            == 0
        ):
            assert time.monotonic() < deadline, "the charts never showed a publication and a delivery"
            for i in range(5):
                publish(node1.http_url, "room:ops", {"n": i}, api_key=API_KEY)
            polls = int(admin.locator("body").get_attribute("data-polls") or 0)
            admin.wait_for_function("n => Number(document.body.dataset.polls) > n", arg=polls)
        for chart in ("#chart-publications", "#chart-deliveries"):
            line = admin.locator(f"{chart} polyline")
            expect(line).to_have_count(1)
            assert len(line.get_attribute("points").split()) >= 2
            assert int(admin.locator(chart).get_attribute("data-points")) >= 2
        expect(admin.locator("#jobs dd[data-name='pending']")).to_have_text("0")
        expect(admin.locator("#dead tbody")).to_contain_text("none")
        for node_id in ("node-1", "node-2", "node-3"):
            assert all(text.strip() for text in numbers(admin, node_id)), numbers(admin, node_id)
        admin.screenshot(path=str(SCREENSHOT), full_page=True)

        # Disconnect user: bob's real connection on node-2 is closed by the server.
        admin.fill("#disconnect-user", "bob")
        admin.get_by_role("button", name="Disconnect").click()
        expect(admin.locator("#disconnect-result")).to_have_text("Disconnected bob on every node.")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                bob.recv(timeout=10 * UNIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4503
        expect(row(admin, "node-2").locator("td").nth(1)).to_have_text("0", timeout=EXPECT_MS)

        # node-3 dies without a word: it leaves the page within 10 s.
        node3.kill()
        killed_at = time.monotonic()
        expect(rows).to_have_count(2, timeout=10_000)
        assert time.monotonic() - killed_at < 10
        expect(row(admin, "node-3")).to_have_count(0)
        expect(admin.locator("#node-count")).to_have_text("(2 alive)")


def test_admin_page_of_a_dev_node_needs_no_key(solo_node, admin):
    """Dev mode without API keys: the API is open, so the page shows the node without asking."""
    admin.goto(f"{solo_node.http_url}/admin")
    expect(admin.locator("#nodes tbody tr")).to_have_count(1, timeout=EXPECT_MS)
    expect(admin.locator("#key-form")).to_be_hidden()
    expect(row(admin, solo_node.node_id)).to_contain_text("(this page)")
    expect(admin.locator("#chart-publications polyline")).to_have_count(1)


def test_admin_route_serves_the_page(solo_node):
    with urllib.request.urlopen(f"{solo_node.http_url}/admin", timeout=10 * UNIT) as response:
        assert response.status == 200
        assert "Tidings ops" in response.read().decode()
