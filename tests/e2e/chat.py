"""A page object for the Tidings web UI: what a person does, in Playwright calls.

Tests talk to the UI only through what a person sees and does (labels, buttons,
text) plus a few ``data-*`` attributes the UI exposes for state (``data-state``,
``data-node``, ``data-offset``). ``ChatPage.open`` takes the page's node and any
further nodes to fail over to, so the same helpers drive a single node or a
cluster.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import BrowserContext, Locator, Page, expect

from ..support.timing import UNIT

__all__ = ["EXPECT_TIMEOUT_MS", "ChatPage"]

EXPECT_TIMEOUT_MS = 10_000 * UNIT


@dataclass
class ChatPage:
    """One signed-in (or signing-in) tab."""

    page: Page
    name: str
    artifacts: Path
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    @classmethod
    def open(
        cls, context: BrowserContext, base_url: str, *, name: str, artifacts: Path, nodes: Sequence[str] = ()
    ) -> ChatPage:
        """Open the UI served by ``base_url``; ``nodes`` are more node addresses (host:port) to fail over to."""
        page = context.new_page()
        chat = cls(page, name, artifacts)
        page.on("pageerror", lambda error: chat.errors.append(str(error)))
        page.on("console", lambda message: chat.console.append(f"{message.type}: {message.text}"))
        query = f"?nodes={quote(','.join(nodes), safe=',:/')}" if nodes else ""
        page.goto(f"{base_url}/{query}")
        return chat

    # --- what a person does ------------------------------------------------------------------------

    def sign_in(self, user: str) -> None:
        self.page.get_by_label("Your name").fill(user)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.locator("#me-name")).to_have_text(user, timeout=EXPECT_TIMEOUT_MS)
        self.expect_state("connected")

    def join_room(self, room: str) -> None:
        self.page.get_by_label("Join or create a room").fill(room)
        self.page.get_by_role("button", name="Join", exact=True).click()
        self.expect_active(f"#{room}")

    def open_conversation(self, title: str) -> None:
        """Click a room (``#name``) or DM (``@name``) in the sidebar."""
        self.page.locator("#sidebar .channel-button", has_text=title).click()
        self.expect_active(title)

    def type(self, text: str) -> None:
        """Type into the composer without sending (others see "… is typing")."""
        self.page.get_by_label("Message", exact=True).press_sequentially(text)

    def send(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        box.fill(text)
        box.press("Enter")
        expect(box).to_have_value("", timeout=EXPECT_TIMEOUT_MS)

    def screenshot(self, label: str, *, full_page: bool = False) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{label}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    # --- what a person sees ------------------------------------------------------------------------

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    def expect_state(self, state: str) -> None:
        expect(self.status).to_have_attribute("data-state", state, timeout=EXPECT_TIMEOUT_MS)

    def node(self) -> str:
        self.expect_state("connected")
        return self.status.get_attribute("data-node") or ""

    def expect_active(self, title: str) -> None:
        expect(self.page.locator("#channel-title")).to_have_text(title, timeout=EXPECT_TIMEOUT_MS)

    @property
    def messages(self) -> Locator:
        """The messages of the conversation shown, oldest first."""
        return self.page.locator("#messages ol.message-list li.message")

    def message_texts(self) -> list[str]:
        return self.messages.locator(".text").all_inner_texts()

    def expect_messages(self, texts: Sequence[str]) -> None:
        """Exactly these messages, in this order, each once."""
        expect(self.messages.locator(".text")).to_have_text(list(texts), timeout=EXPECT_TIMEOUT_MS)

    def expect_typing(self, text: str | re.Pattern[str]) -> None:
        expect(self.page.locator("#typing")).to_have_text(text, timeout=EXPECT_TIMEOUT_MS)

    def unread_badge(self, title: str) -> Locator:
        return self.page.locator(
            "#sidebar li", has=self.page.locator(".channel-name", has_text=title)
        ).locator(".badge")

    def person(self, user: str) -> Locator:
        return self.page.locator(f"#people-list li[data-user='{user}']")

    def save_diagnostics(self) -> None:
        """Screenshot and console log, for a failed test."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        (self.artifacts / f"{self.name}-console.log").write_text("\n".join(self.console + self.errors))
        if not self.page.is_closed():
            self.screenshot(f"{self.name}-at-failure", full_page=True)
