"""``tidings``: run a node or a local cluster, and talk to one from a shell.

tidings serve [--host H] [--port P] [--shared-port S]   one node
tidings up [--nodes N] [--shards S [--replicas R]]      a local cluster on an embedded Valkey
tidings token USER [--ttl SECONDS]                      sign a token with TIDINGS_JWT_SECRET
tidings publish CHANNEL JSON [--url URL]                POST /api/publish
tidings notify TITLE (--user U | --topic T | --all)     POST /api/notifications
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence

__all__ = ["main"]


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket; with ``reuse_port`` several processes share the port (the kernel spreads load)."""
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it, Nagle plus
    # delayed ACKs add ~40 ms to every HTTP response on the asyncio loop (uvloop sets it regardless).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(args: argparse.Namespace) -> int:
    from tidings.server.config import Settings
    from tidings.server.gc_tuning import tune_garbage_collector
    from tidings.server.http.app import create_app
    from tidings.server.logs import configure_logging
    from tidings.server.transport.server import node_server

    settings = Settings.from_env()
    sockets = [bind_socket(args.host, args.port, reuse_port=args.shared_port is not None)]
    if args.shared_port is not None:
        sockets.append(bind_socket(args.host, args.shared_port, reuse_port=True))
    server = node_server(create_app(settings), settings, shared_sockets=sockets[1:], log_level=args.log_level)
    configure_logging(settings.node_id, log_format=settings.log_format, level=args.log_level)
    tune_garbage_collector()
    server.run(sockets=sockets)
    return 0


def token(args: argparse.Namespace) -> int:
    from tidings.server.channels import check_user
    from tidings.server.gateway.auth import issue_token
    from tidings.server.gateway.protocol import ProtocolError

    secret = os.environ.get("TIDINGS_JWT_SECRET")
    if not secret:
        print("tidings token: set TIDINGS_JWT_SECRET", file=sys.stderr)
        return 2
    try:
        check_user(args.user)  # a token for any other id could never sign in
    except ProtocolError as exc:
        print(f"tidings token: {exc.message}", file=sys.stderr)
        return 2
    print(issue_token(args.user, secret, ttl=args.ttl, name=args.name))
    return 0


def publish(args: argparse.Namespace) -> int:
    from tidings.client.publisher import Publisher, PublishError

    try:
        data = json.loads(args.data)
    except ValueError:
        print("tidings publish: DATA must be JSON", file=sys.stderr)
        return 2
    try:
        with Publisher(args.url, api_key=args.api_key) as publisher:
            position = publisher.publish(args.channel, data)
    except PublishError as exc:
        print(f"tidings publish: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(position.encode()))
    return 0


def notify(args: argparse.Namespace) -> int:
    from tidings.client.publisher import Publisher, PublishError

    try:
        data = None if args.data is None else json.loads(args.data)
    except ValueError:
        print("tidings notify: --data must be JSON", file=sys.stderr)
        return 2
    deliver_at: float | str | None = args.deliver_at
    if args.deliver_at is not None:
        try:
            deliver_at = float(args.deliver_at)
        except ValueError:
            deliver_at = args.deliver_at  # ISO 8601: the gateway parses it
    try:
        with Publisher(args.url, api_key=args.api_key) as publisher:
            result = publisher.notify(
                title=args.title,
                users=args.user,
                topic=args.topic,
                all_users=args.all,
                type=args.type,
                severity=args.severity,
                body=args.body,
                data=data,
                dedupe_key=args.dedupe_key,
                deliver_at=deliver_at,
            )
    except PublishError as exc:
        print(f"tidings notify: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def up(args: argparse.Namespace) -> int:
    from tidings.server.devcluster.supervisor import run_cluster

    return run_cluster(
        nodes=args.nodes, host=args.host, port=args.port, shards=args.shards, replicas=args.replicas
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidings", description="Realtime chat and notification gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="run one gateway node")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--shared-port", type=int, help="also listen on this port with SO_REUSEPORT (tidings up)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(run=serve)

    p = commands.add_parser("up", help="run a local cluster: embedded Valkey and N nodes")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="the shared port; node i also listens on port+i")
    p.add_argument(
        "--shards", type=int, default=0, help="run a local Redis Cluster of this many primaries instead"
    )
    p.add_argument("--replicas", type=int, default=0, help="with --shards: replicas per primary")
    p.set_defaults(run=up)

    p = commands.add_parser("token", help="print a token for USER, signed with TIDINGS_JWT_SECRET")
    p.add_argument("user")
    p.add_argument("--ttl", type=float, default=3600.0)
    p.add_argument("--name")
    p.set_defaults(run=token)

    p = commands.add_parser("publish", help="publish JSON data to a channel over the HTTP API")
    p.add_argument("channel")
    p.add_argument("data", help="JSON")
    p.add_argument("--url", default=os.environ.get("TIDINGS_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", default=os.environ.get("TIDINGS_API_KEY"))
    p.set_defaults(run=publish)

    p = commands.add_parser(
        "notify", help="notify users, a topic's subscribers or everyone over the HTTP API"
    )
    p.add_argument("title")
    audience = p.add_mutually_exclusive_group(required=True)
    audience.add_argument("--user", action="append", help="a recipient (repeat for several)")
    audience.add_argument("--topic", help="every subscriber of this topic")
    audience.add_argument("--all", action="store_true", help="every known user")
    p.add_argument("--body", default="")
    p.add_argument("--type", default="notification")
    p.add_argument("--severity", default="info", choices=("info", "success", "warn", "error", "fatal"))
    p.add_argument("--data", help="JSON")
    p.add_argument("--dedupe-key", help="a retry with the same key notifies nobody twice")
    p.add_argument("--deliver-at", help="epoch seconds or ISO 8601: deliver then, not now")
    p.add_argument("--url", default=os.environ.get("TIDINGS_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", default=os.environ.get("TIDINGS_API_KEY"))
    p.set_defaults(run=notify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
