"""A chat bot: a WebSocket client that sits in a room and answers commands.

It joins ``room:<name>`` as its own user and answers ``!ping`` with ``pong`` and ``!echo <text>``
with ``<text>``, each reply quoting the offset it answers. The SDK's :class:`Connection` does the
hard parts: it reconnects to any node with backoff and resumes the room with ``since``, so the bot
sees every message once, in order, even across node restarts; a channel it cannot resume comes
as an ``unrecovered`` event (here: logged).

Run it against a node (``make up``, or ``tidings serve``), with a token for the bot's user::

    export TIDINGS_JWT_SECRET=...             # the secret the nodes use
    python examples/chat_bot.py --url ws://127.0.0.1:8000/ws --token "$(tidings token helpbot)" --room lobby

then, in the web UI (http://127.0.0.1:8000) or any client, write ``!ping`` in room ``lobby``.
``--replies N`` stops after N answers (tests use it); Ctrl-C stops it otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

from tidings.client import Connection


def answer(text: str) -> str | None:
    """The bot's reply to a message's text, or None to stay quiet."""
    if text.strip() == "!ping":
        return "pong"
    if text.startswith("!echo "):
        return text.removeprefix("!echo ").strip() or None
    return None


async def run_bot(urls: list[str], token: str, room: str, *, replies: int | None = None) -> None:
    channel = f"room:{room}"
    async with Connection(urls, token) as bot:
        await bot.subscribe(channel)
        me = bot.info["user"]
        print(f"{me} is in {channel} on node {bot.info['node']}", flush=True)
        answered = 0
        while replies is None or answered < replies:
            push: dict[str, Any] = await bot.recv()
            if push.get("push") == "unrecovered":
                print(f"missed messages in {push['channel']} could not be recovered", flush=True)
                continue
            if push.get("push") != "publication" or push["channel"] != channel:
                continue
            if push.get("from", {}).get("user") == me:
                continue  # its own replies come back too
            data = push.get("data")
            text = data.get("text") if isinstance(data, dict) else None
            reply = answer(text) if isinstance(text, str) else None
            if reply is None:
                continue
            await bot.publish(channel, {"text": reply, "reply_to": push["offset"]})
            answered += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", action="append", help="a node's ws://.../ws URL (repeat for several)")
    parser.add_argument("--token", default=os.environ.get("TIDINGS_TOKEN"), help="or TIDINGS_TOKEN")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--replies", type=int, help="stop after this many answers")
    args = parser.parse_args()
    if not args.token:
        parser.error("a token is needed: --token or TIDINGS_TOKEN (tidings token <user>)")
    urls = args.url or [os.environ.get("TIDINGS_WS_URL", "ws://127.0.0.1:8000/ws")]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_bot(urls, args.token, args.room, replies=args.replies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
