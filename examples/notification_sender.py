"""A notification sender: a backend that notifies users, exactly once even when it retries.

``POST /api/notifications`` (the SDK's :meth:`Publisher.notify`) stores the notification in each
recipient's inbox and pushes it to every connection they have open, on any node; a user who is
offline finds it, counted as unread, at the next connect. The audience is a list of users, a
topic's subscribers, or everyone. With a ``dedupe_key`` (here derived from the event it reports,
e.g. an order id) a retry after a timeout or an error notifies nobody twice, so the sender can
simply retry until it gets an answer.

Run it against a node (``make up``, or ``tidings serve`` with ``TIDINGS_API_KEYS`` set)::

    python examples/notification_sender.py --url http://127.0.0.1:8000 --api-key "$TIDINGS_API_KEY" \\
        --user alice --title "Order 1042 shipped" --body "Arrives Thursday" --dedupe-key order-1042-shipped

A dev node (``make up``) needs no key. Open http://127.0.0.1:8000 as alice to see it arrive.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from tidings.client import Publisher, PublishError


def send(
    publisher: Publisher,
    users: Sequence[str],
    title: str,
    *,
    body: str = "",
    severity: str = "info",
    dedupe_key: str | None = None,
) -> dict[str, Any]:
    """Notify ``users``; retried on temporary errors (safe with ``dedupe_key``). Returns ``{id, recipients}``."""
    for attempt in range(5):
        try:
            return publisher.notify(
                users=users, title=title, body=body, severity=severity, dedupe_key=dedupe_key
            )
        except PublishError as exc:
            if not exc.temporary or attempt == 4:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", action="append", required=True, help="a recipient (repeat for several)")
    parser.add_argument("--title", required=True)
    parser.add_argument("--body", default="")
    parser.add_argument("--severity", default="info", choices=("info", "success", "warn", "error", "fatal"))
    parser.add_argument("--dedupe-key", help="the same key again notifies nobody twice")
    parser.add_argument("--url", default=os.environ.get("TIDINGS_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("TIDINGS_API_KEY"), help="or TIDINGS_API_KEY")
    args = parser.parse_args()
    try:
        with Publisher(args.url, api_key=args.api_key) as publisher:
            result = send(
                publisher,
                args.user,
                args.title,
                body=args.body,
                severity=args.severity,
                dedupe_key=args.dedupe_key,
            )
    except PublishError as exc:
        print(f"notify failed: {exc}", file=sys.stderr)
        return 1
    seen = " (already sent: nobody notified twice)" if result.get("duplicate") else ""
    print(f"notification {result['id']} to {result['recipients']} user(s){seen}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
