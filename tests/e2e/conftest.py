"""Fixtures for the browser tests: Debian's Chromium through Playwright, real nodes, artifacts.

The browser is /usr/bin/chromium (``TIDINGS_CHROMIUM`` overrides it); Playwright's own
browser download is never used. Without a browser these tests skip on a workstation
and FAIL in CI (``CI=true``), so a broken image cannot pass by skipping.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ..support.cluster import NodeProcess
from ..support.tools import missing_tool
from .servers import serve_node

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext

    from .chat import ChatPage

CHROMIUM = Path(os.environ.get("TIDINGS_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"


def _unavailable(reason: str) -> None:
    missing_tool(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        except Error as exc:
            _unavailable(f"Chromium at {CHROMIUM} does not start: {exc.message.splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """This test's folder under test-artifacts/e2e/ (screenshots, node logs, console logs)."""
    path = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    shutil.rmtree(path, ignore_errors=True)  # only this run's screenshots and logs
    path.mkdir(parents=True)
    return path


@pytest.fixture
def solo_node(artifacts: Path) -> Iterator[NodeProcess]:
    """One real ``tidings serve`` process (in-memory backplane, dev mode)."""
    with serve_node("e2e-solo", artifacts) as served:
        yield served


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    item.stash.setdefault(_FAILED, False)
    if report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def tabs(
    browser: Browser, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ChatPage]]:
    """Open a signed-out tab in a fresh browser context: ``tabs("alice", node.http_url, nodes=[...])``.

    Each tab is its own context (its own storage), like two people on two machines. When the test
    fails, every tab leaves a full-page screenshot and its console log in the artifacts folder.
    """
    from .chat import ChatPage

    opened: list[tuple[BrowserContext, ChatPage]] = []

    def open_tab(
        name: str, base_url: str, *, nodes: tuple[str, ...] = (), width: int = 1200, height: int = 760
    ) -> ChatPage:
        context = browser.new_context(viewport={"width": width, "height": height})
        chat = ChatPage.open(context, base_url, name=name, artifacts=artifacts, nodes=nodes)
        opened.append((context, chat))
        return chat

    yield open_tab
    failed = request.node.stash.get(_FAILED, False)
    for context, chat in opened:
        if failed:
            chat.save_diagnostics()
        context.close()
