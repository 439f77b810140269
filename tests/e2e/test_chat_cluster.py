"""The web UI in real Chromium against a real 3-node cluster on Redis/Valkey (issue 6, "Must show").

alice's tab is served by node-1, bob's by node-2. alice reaches each node through a
TCP link the test controls (real sockets): when node-1 is killed, the links to the
other nodes refuse for a moment, so bob's messages are certainly sent while alice is
away; then she lands on another node and must get exactly those messages, once, in order.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from ..support.cluster import Cluster, start_cluster
from ..support.node import API_KEY
from .backend import notify
from .chat import EXPECT_TIMEOUT_MS
from .proxy import TcpProxy, tcp_proxy

pytestmark = pytest.mark.cluster

# Dev mode lets the UI sign in; tabs fail over across ports, so every node accepts every local origin.
UI_ENV = {"TIDINGS_DEV": "1", "TIDINGS_ALLOWED_ORIGINS": "*"}


@pytest.fixture
def cluster(redis_url: str) -> Iterator[Cluster]:
    with start_cluster(
        3, redis_url=redis_url, key_prefix=f"e2e-{uuid.uuid4().hex[:12]}", env=UI_ENV
    ) as running:
        yield running


@pytest.fixture
def links(cluster: Cluster) -> Iterator[list[TcpProxy]]:
    """One cuttable TCP link per node, in node order."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(tcp_proxy(node.port)) for node in cluster.nodes]


def test_chat_survives_the_death_of_a_node(cluster, links, tabs):
    """Cross-node chat, typing, presence and notifications; alice's node dies and she loses nothing."""
    node1, node2, node3 = cluster.nodes
    alice = tabs(
        "alice", links[0].http_url, nodes=(f"127.0.0.1:{links[1].port}", f"127.0.0.1:{links[2].port}")
    )
    bob = tabs("bob", node2.http_url, nodes=(f"127.0.0.1:{node3.port}",))
    alice.sign_in("alice")
    bob.sign_in("bob")
    assert (alice.node(), bob.node()) == ("node-1", "node-2")

    alice.join_room("ops")
    bob.join_room("ops")
    alice.send("hello from node-1")
    bob.expect_messages(["hello from node-1"])
    bob.type("on my w")
    alice.expect_typing("bob is typing…")
    bob.send("hello from node-2")
    for tab in (alice, bob):
        tab.expect_messages(["hello from node-1", "hello from node-2"])

    # Presence across nodes: each sees the other online, on the other's node.
    expect(alice.person("bob")).to_have_attribute("data-status", "online", timeout=EXPECT_TIMEOUT_MS)
    expect(alice.person("bob")).to_contain_text("node-2")
    expect(bob.person("alice")).to_contain_text("node-1", timeout=EXPECT_TIMEOUT_MS)
    alice.screenshot("01-alice-on-node-1")

    # A backend notifies bob through a third node; it reaches his bell.
    notify(
        node3.http_url, ["bob"], api_key=API_KEY, type="deploy.done", severity="success",
        title="Deploy finished", body="v2.4.1 is live on every node",
    )  # fmt: skip
    expect(bob.page.locator("#bell-count")).to_have_text("1", timeout=EXPECT_TIMEOUT_MS)
    bob.page.get_by_role("button", name=re.compile(r"^Notifications")).click()
    item = bob.page.locator("#notification-list li", has_text="Deploy finished")
    expect(item).to_have_attribute("data-severity", "success", timeout=EXPECT_TIMEOUT_MS)
    bob.screenshot("02-bob-on-node-2-with-a-notification")
    bob.page.keyboard.press("Escape")

    # node-1 dies. The other nodes refuse alice for a moment, so bob certainly writes while she is away.
    links[1].refuse()
    links[2].refuse()
    node1.kill()
    alice.expect_state("reconnecting")
    alice.screenshot("03-alice-reconnecting")
    missed = [f"while you were away {i}" for i in range(1, 4)]
    for text in missed:
        bob.send(text)
    bob.expect_messages(["hello from node-1", "hello from node-2", *missed])
    assert alice.message_texts() == ["hello from node-1", "hello from node-2"]

    links[1].accept()
    links[2].accept()
    new_node = alice.node()
    assert new_node in ("node-2", "node-3")
    expect(alice.status).to_contain_text("recovered 3 missed messages")
    alice.expect_messages(["hello from node-1", "hello from node-2", *missed])
    bob.send("welcome back")
    alice.send("thanks, nothing lost")
    final = ["hello from node-1", "hello from node-2", *missed, "welcome back", "thanks, nothing lost"]
    for tab in (alice, bob):
        tab.expect_messages(final)
    offsets = alice.messages.evaluate_all("items => items.map(i => Number(i.dataset.offset))")
    assert offsets == list(range(1, len(final) + 1))
    alice.screenshot(f"04-alice-recovered-on-{new_node}")

    # Presence heals: the dead node's entry goes, alice shows on her new node.
    expect(bob.person("alice")).to_contain_text(new_node, timeout=3 * EXPECT_TIMEOUT_MS)
    expect(bob.person("alice")).not_to_contain_text("node-1", timeout=3 * EXPECT_TIMEOUT_MS)
    bob.screenshot("05-bob-sees-alice-on-her-new-node")
    assert alice.errors == [] and bob.errors == []
