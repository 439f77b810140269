"""A backend publisher: a service that posts into channels over the HTTP API.

Backends do not hold WebSockets: they call ``POST /api/publish`` with an API key, through the
SDK's :class:`Publisher` (or :class:`AsyncPublisher`). Each publication gets its place in the
channel's history, ``{epoch, offset}``, and reaches every subscriber on every node. This one
publishes each line given (as ``{"text": ..., "source": ...}``), in order; a temporary failure
(a node draining, Redis failing over) is retried with backoff, any other error stops it.

Run it against a node (``make up``, or ``tidings serve`` with ``TIDINGS_API_KEYS`` set)::

    python examples/backend_publisher.py --url http://127.0.0.1:8000 --api-key "$TIDINGS_API_KEY" \\
        room:lobby "deploy 1.4.2 started" "deploy 1.4.2 done"

or pipe lines in: ``tail -f deploy.log | python examples/backend_publisher.py room:ops -``.
A dev node (``make up``) needs no key.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable

from tidings.client import Publisher, PublishError


def publish_all(publisher: Publisher, channel: str, lines: Iterable[str], *, source: str) -> int:
    """Publish each line in order; returns how many were published."""
    count = 0
    for line in lines:
        text = line.rstrip("\n")
        if not text:
            continue
        for attempt in range(5):
            try:
                position = publisher.publish(channel, {"text": text, "source": source})
                break
            except PublishError as exc:
                if not exc.temporary or attempt == 4:
                    raise
                time.sleep(0.2 * 2**attempt)  # a node draining or Redis failing over: try again
        print(f"{channel} #{position.offset} (epoch {position.epoch}): {text}", flush=True)
        count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("channel", help="room:<name>, dm:<a>:<b>, user:<id> or broadcast")
    parser.add_argument("text", nargs="+", help="messages to publish; '-' reads lines from stdin")
    parser.add_argument("--url", default=os.environ.get("TIDINGS_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("TIDINGS_API_KEY"), help="or TIDINGS_API_KEY")
    parser.add_argument("--source", default="backend_publisher")
    args = parser.parse_args()
    lines: Iterable[str] = sys.stdin if args.text == ["-"] else args.text
    try:
        with Publisher(args.url, api_key=args.api_key) as publisher:
            publish_all(publisher, args.channel, lines, source=args.source)
    except PublishError as exc:
        print(f"publish failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
