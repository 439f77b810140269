"""The Python SDK's examples (examples/*.py) run as documented against a live node.

Each is started as its own process, with the command line of its docstring, so a change to the
SDK or the API that breaks an example fails here.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tidings.client import Connection
from tidings.server.gateway.auth import issue_token

from .support.node import API_KEY, SECRET, run_node, test_settings
from .support.timing import UNIT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def run_example(name: str, *args: str) -> asyncio.subprocess.Process:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def finish(process: asyncio.subprocess.Process) -> str:
    async with asyncio.timeout(20 * UNIT):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


def test_every_example_has_a_how_to_run_docstring() -> None:
    names = sorted(path.name for path in EXAMPLES.glob("*.py"))
    assert names == ["backend_publisher.py", "chat_bot.py", "notification_sender.py"]
    for name in names:
        text = (EXAMPLES / name).read_text()
        assert text.startswith('"""') and f"python examples/{name}" in text, name


async def test_chat_bot_answers_in_its_room() -> None:
    async with run_node(test_settings()) as node:
        bot = await run_example(
            "chat_bot.py", "--url", node.ws_url, "--token", issue_token("helpbot", SECRET), "--room", "ex"
        )
        try:
            assert bot.stdout is not None
            async with asyncio.timeout(20 * UNIT):
                ready = (await bot.stdout.readline()).decode()
            assert ready.startswith("helpbot is in room:ex"), ready
            async with Connection(node.ws_url, issue_token("alice", SECRET)) as alice:
                await alice.subscribe("room:ex")
                asked = await alice.publish("room:ex", {"text": "!ping"})
                await alice.publish("room:ex", {"text": "just chatting"})
                echoed = await alice.publish("room:ex", {"text": "!echo hello there"})
                replies = []
                while len(replies) < 2:
                    push = await alice.publications("room:ex", timeout=10 * UNIT)
                    if push["from"]["user"] == "helpbot":
                        replies.append(push["data"])
            assert replies == [
                {"text": "pong", "reply_to": asked["offset"]},
                {"text": "hello there", "reply_to": echoed["offset"]},
            ]
        finally:  # without --replies it runs until stopped
            if bot.returncode is None:
                bot.terminate()
                await bot.wait()


async def test_chat_bot_stops_after_its_replies() -> None:
    async with run_node(test_settings()) as node:
        token = issue_token("helpbot", SECRET)
        bot = await run_example("chat_bot.py", "--url", node.ws_url, "--token", token, "--replies", "1")
        assert bot.stdout is not None
        async with asyncio.timeout(20 * UNIT):
            await bot.stdout.readline()
        async with Connection(node.ws_url, issue_token("bob", SECRET)) as bob:
            await bob.publish("room:lobby", {"text": "!ping"})
            assert await finish(bot) == ""


async def test_backend_publisher_posts_each_line_in_order() -> None:
    async with run_node(test_settings()) as node, Connection(node.ws_url, issue_token("ops", SECRET)) as ops:
        await ops.subscribe("room:deploys")
        out = await finish(
            await run_example(
                "backend_publisher.py",
                "--url",
                node.http_url,
                "--api-key",
                API_KEY,
                "room:deploys",
                "deploy started",
                "deploy done",
            )
        )
        assert out.splitlines()[1].startswith("room:deploys #2")
        received = [await ops.publications("room:deploys", timeout=10 * UNIT) for _ in range(2)]
        assert [(p["offset"], p["data"]) for p in received] == [
            (1, {"text": "deploy started", "source": "backend_publisher"}),
            (2, {"text": "deploy done", "source": "backend_publisher"}),
        ]


async def test_backend_publisher_without_the_key_fails_plainly() -> None:
    async with run_node(test_settings()) as node:
        process = await run_example("backend_publisher.py", "--url", node.http_url, "room:x", "hi")
        async with asyncio.timeout(20 * UNIT):
            _, err = await process.communicate()
        assert process.returncode == 1 and b"publish failed: 401" in err


async def test_notification_sender_notifies_once_per_dedupe_key() -> None:
    async with run_node(test_settings()) as node:
        args = [
            "--url",
            node.http_url,
            "--api-key",
            API_KEY,
            "--user",
            "alice",
            "--title",
            "Order 1042 shipped",
        ]
        args += ["--body", "Arrives Thursday", "--dedupe-key", "order-1042-shipped"]
        async with Connection(node.ws_url, issue_token("alice", SECRET)) as alice:
            first = await finish(await run_example("notification_sender.py", *args))
            assert first.startswith("notification ") and "to 1 user(s)\n" in first
            push = await alice.recv(timeout=10 * UNIT)
            assert push["push"] == "notification" and push["unread"] == 1
            assert push["notification"]["title"] == "Order 1042 shipped"
            assert push["notification"]["body"] == "Arrives Thursday"
            again = await finish(await run_example("notification_sender.py", *args))
            assert "already sent" in again
            assert (await alice.call("notifications"))["unread"] == 1
        async with Connection(node.ws_url, issue_token("alice", SECRET)) as later:
            assert later.info["unread"] == 1
