"""The web UI in real Chromium against one real node: two people chat, type, page history, DM."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from .backend import notify, publish
from .chat import EXPECT_TIMEOUT_MS
from .proxy import tcp_proxy
from .servers import start_node, stop_node


def test_two_people_chat_in_a_room(solo_node, tabs):
    """alice and bob join a room, exchange messages both ways, see typing, presence and unread badges."""
    alice = tabs("alice", solo_node.http_url)
    bob = tabs("bob", solo_node.http_url)
    alice.sign_in("alice")
    bob.sign_in("bob")
    assert alice.node() == bob.node() == "e2e-solo"
    expect(alice.status).to_contain_text("node e2e-solo")

    alice.join_room("lobby")
    bob.join_room("lobby")
    alice.send("hello bob <b>this is not bold</b>")
    bob.expect_messages(["hello bob <b>this is not bold</b>"])
    assert bob.messages.locator("b").count() == 0  # user text is never HTML

    bob.type("hi ali")
    alice.expect_typing("bob is typing…")
    alice.screenshot("01-alice-sees-bob-typing")
    bob.send("hi alice")
    for tab in (alice, bob):
        tab.expect_messages(["hello bob <b>this is not bold</b>", "hi alice"])
    alice.expect_typing("")  # a message ends its author's typing indicator
    expect(alice.messages.last).to_have_attribute("data-from", "bob")
    expect(alice.messages.first).to_have_class(re.compile(r"\bmine\b"))

    # Unread badge: alice looks at #general while bob writes in #lobby; opening #lobby clears it.
    alice.open_conversation("#general")
    bob.send("are you there?")
    expect(alice.unread_badge("#lobby")).to_have_text("1", timeout=EXPECT_TIMEOUT_MS)
    alice.screenshot("02-alice-unread-badge")
    alice.open_conversation("#lobby")
    expect(alice.unread_badge("#lobby")).to_be_hidden(timeout=EXPECT_TIMEOUT_MS)
    alice.expect_messages(["hello bob <b>this is not bold</b>", "hi alice", "are you there?"])

    # Presence: both are online in #lobby, with the node they are connected to.
    expect(alice.person("bob")).to_have_attribute("data-status", "online", timeout=EXPECT_TIMEOUT_MS)
    expect(alice.person("bob")).to_contain_text("e2e-solo")
    expect(alice.person("alice")).to_contain_text("(you)")

    # A direct message shows up for the other person, with an unread badge.
    bob.page.get_by_role("button", name="Message alice").click()
    bob.expect_active("@alice")
    bob.send("a secret for you")
    expect(alice.unread_badge("@bob")).to_have_text("1", timeout=EXPECT_TIMEOUT_MS)
    alice.open_conversation("@bob")
    alice.expect_messages(["a secret for you"])
    bob.screenshot("03-bob-direct-message")

    # The bell opens a panel with the notifications (or says the server has none to give).
    bob.page.get_by_role("button", name=re.compile(r"^Notifications")).click()
    panel = bob.page.get_by_role("region", name="Notifications")
    expect(panel).to_be_visible()
    expect(bob.page.locator("#notifications-note, #notification-list li").first).to_be_visible(
        timeout=EXPECT_TIMEOUT_MS
    )
    bob.screenshot("04-bob-notifications-panel")
    bob.page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(bob.page.get_by_role("button", name=re.compile(r"^Notifications"))).to_be_focused()

    # Phone width: the conversation is readable and the rooms are one tap away.
    bob.page.set_viewport_size({"width": 390, "height": 844})
    menu = bob.page.get_by_role("button", name="Rooms and direct messages")
    expect(menu).to_be_visible()
    bob.screenshot("05-bob-phone")
    menu.click()
    expect(bob.page.locator("#sidebar")).to_be_visible()
    bob.screenshot("06-bob-phone-rooms")
    bob.page.keyboard.press("Escape")

    assert alice.errors == [] and bob.errors == []


def test_older_messages_load_on_scroll(solo_node, tabs):
    """History pages: the latest page first, older ones on scroll, every message once and in order."""
    texts = [f"message {i:03d}" for i in range(1, 131)]
    for text in texts:
        publish(solo_node.http_url, "room:archive", {"type": "message", "text": text})
    carol = tabs("carol", solo_node.http_url)
    carol.sign_in("carol")
    carol.join_room("archive")
    expect(carol.messages).to_have_count(50, timeout=EXPECT_TIMEOUT_MS)
    assert carol.message_texts() == texts[-50:]
    for expected in (100, 130):
        carol.page.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
        expect(carol.messages).to_have_count(expected, timeout=EXPECT_TIMEOUT_MS)
    carol.expect_messages(texts)
    expect(carol.page.get_by_role("button", name="Load older messages")).to_be_hidden()
    offsets = [int(o) for o in carol.messages.evaluate_all("items => items.map(i => i.dataset.offset)")]
    assert offsets == list(range(1, 131))
    assert carol.errors == []


def test_client_library_pure_parts(solo_node, tabs):
    """tidings.js: several messages per frame, duplicate/gap detection, backoff with full jitter, close codes."""
    tab = tabs("library", solo_node.http_url)
    result = tab.page.evaluate(
        """async () => {
            const t = await import("/tidings.js");
            const tracker = new t.PositionTracker();
            return {
                frame: t.splitFrame('{"id":1,"result":{}}\\n{"push":"publication","offset":2}\\n'),
                verdicts: [
                    tracker.accept("room:a", "e1", 5), tracker.accept("room:a", "e1", 6),
                    tracker.accept("room:a", "e1", 6), tracker.accept("room:a", "e1", 4),
                    tracker.accept("room:a", "e1", 9), tracker.accept("room:a", "e2", 1),
                ],
                position: tracker.get("room:a"),
                delays: [0, 1, 3, 20].map((n) => t.backoffDelay(n, {minDelay: 500, maxDelay: 20000}, () => 0.999)),
                zero: t.backoffDelay(7, {}, () => 0),
                reconnects: [1006, 1000, 4001, 4008, 4029, 4499, 4500, 4501, 4503, 4999].map(t.closeReconnects),
            };
        }"""
    )
    assert result["frame"] == [{"id": 1, "result": {}}, {"push": "publication", "offset": 2}]
    assert result["verdicts"] == ["new", "new", "duplicate", "duplicate", "gap", "reset"]
    assert result["position"] == {"epoch": "e2", "offset": 1}
    assert result["delays"] == [499, 999, 3996, 19980]
    assert result["zero"] == 0
    assert result["reconnects"] == [True, True, True, True, True, True, False, False, False, False]


def test_tab_reconnects_when_its_node_restarts(tabs, artifacts):
    """The node goes away: the tab shows "reconnecting", comes back on the new node and reloads lost history."""
    node = start_node("e2e-first", artifacts)
    try:
        alice = tabs("alice", node.http_url)
        alice.sign_in("alice")
        alice.send("before the restart")
        alice.expect_messages(["before the restart"])
        stop_node(node)
        alice.expect_state("reconnecting")
        expect(alice.status).to_contain_text("Reconnecting")
        alice.screenshot("01-alice-reconnecting")
        node = start_node("e2e-second", artifacts, port=node.port)
        assert alice.node() == "e2e-second"
        # The in-memory backplane lost its streams: a new epoch, so the tab reloads instead of replaying.
        expect(alice.status).to_contain_text("history reloaded")
        expect(alice.messages).to_have_count(0)
        alice.send("after the restart")
        alice.expect_messages(["after the restart"])
        alice.screenshot("02-alice-back")
        assert alice.errors == []
    finally:
        stop_node(node)


def test_missed_messages_are_recovered_once_in_order(solo_node, tabs):
    """alice's connection drops while bob writes: on reconnect she gets exactly what she missed, in order."""
    with tcp_proxy(solo_node.port) as proxy:
        alice = tabs("alice", proxy.http_url)  # alice reaches the node through a link the test can cut
        bob = tabs("bob", solo_node.http_url)
        alice.sign_in("alice")
        bob.sign_in("bob")
        alice.join_room("resume")
        bob.join_room("resume")
        bob.send("before the drop")
        alice.expect_messages(["before the drop"])

        proxy.refuse()
        proxy.cut()
        alice.expect_state("reconnecting")
        missed = [f"missed {i}" for i in range(1, 4)]
        for text in missed:
            bob.send(text)
        bob.expect_messages(["before the drop", *missed])
        alice.screenshot("01-alice-cut-off")
        assert alice.message_texts() == ["before the drop"]

        proxy.accept()
        alice.expect_state("connected")
        expect(alice.status).to_contain_text("recovered 3 missed messages")
        expect(alice.status).to_have_attribute("data-missed", "3")
        alice.expect_messages(["before the drop", *missed])
        bob.send("live again")
        alice.expect_messages(["before the drop", *missed, "live again"])
        offsets = alice.messages.evaluate_all("items => items.map(i => Number(i.dataset.offset))")
        assert offsets == [1, 2, 3, 4, 5]
        alice.screenshot("02-alice-recovered")
        assert alice.errors == [] and bob.errors == []


def test_notifications_reach_the_bell(solo_node, tabs):
    """Backend notifications show in the bell with their severity; marking read in one tab updates the other."""
    bob = tabs("bob", solo_node.http_url)
    bob_again = tabs("bob-second-tab", solo_node.http_url)
    bob.sign_in("bob")
    bob_again.sign_in("bob")
    bell = bob.page.get_by_role("button", name=re.compile(r"^Notifications"))
    for severity, title in [
        ("warn", "Disk 85% full"),
        ("error", "Build #512 failed"),
        ("fatal", "Redis down"),
    ]:
        notify(solo_node.http_url, ["bob"], type="ops.alert", severity=severity, title=title, body="<i>x</i>")
    for tab in (bob, bob_again):
        expect(tab.page.locator("#bell-count")).to_have_text("3", timeout=EXPECT_TIMEOUT_MS)
    expect(bell).to_have_accessible_name("Notifications, 3 unread")

    bell.click()
    items = bob.page.locator("#notification-list li")
    expect(items).to_have_count(3, timeout=EXPECT_TIMEOUT_MS)
    assert items.evaluate_all("items => items.map(i => i.dataset.severity)") == ["fatal", "error", "warn"]
    expect(items.first).to_have_class(re.compile(r"\bsev-fatal\b.*\bunread\b"))
    assert bob.page.locator("#notification-list i").count() == 0  # bodies are text, never HTML
    bob.screenshot("01-bob-notifications")

    items.filter(has_text="Build #512 failed").get_by_role("button", name=re.compile("^Mark")).click()
    for tab in (bob, bob_again):  # read on one tab is seen on every connection of the user
        expect(tab.page.locator("#bell-count")).to_have_text("2", timeout=EXPECT_TIMEOUT_MS)
    bob.page.get_by_role("button", name="Mark all read").click()
    for tab in (bob, bob_again):
        expect(tab.page.locator("#bell-count")).to_be_hidden(timeout=EXPECT_TIMEOUT_MS)
    expect(bob.page.locator("#notification-list li.unread")).to_have_count(0)
    bob.screenshot("02-bob-all-read")
    assert bob.errors == [] and bob_again.errors == []
