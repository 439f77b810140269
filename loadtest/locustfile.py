"""Locust users that prove cross-node fan-out, with a verifier that fails the run on any loss or duplicate.

Shapes (pick user classes by name; the verdict covers whatever ran):

    chat            ChatUser                                 rooms of --room-size (5-20) users, each at --chat-rate
    broadcast       BroadcastPublisher BroadcastListener     one room, one publisher at --broadcast-rate, fan-out to all
    notifications   NotificationBackend NotifiedUser         backend POSTs to users and a topic; users receive
    reconnect storm ReconnectingChatUser                     chat, and every --reconnect-interval s a --reconnect-share
                                                             of users drop and reconnect to another node with ``since``
    (self-test)     LossyChatUser                            chat, but discards --drop-share of what it receives

    locust -f loadtest/locustfile.py --headless -u 200 -r 50 -t 60s \\
        --nodes http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003 \\
        --html loadtest/reports/run.html ChatUser ReconnectingChatUser

Users are spread round-robin over ``--nodes`` (or use ``--host`` with one load-balancer
URL: each user learns its node from the connect reply). Every message carries its
publisher's node and send time, so receipt latency is reported as locust statistics
``deliver same-node`` / ``deliver cross-node`` (``recovered`` for those replayed after a
reconnect, ``notification`` for notifications).

The verifier (loadtest/ledger.py) keeps, in every process, what was published and
what each subscription received; when the run stops, the master asks every worker
for its ledger (locust custom messages), checks every owed delivery and prints a
table per (publisher node, receiver node) pair plus a ``TIDINGS-VERDICT {json}``
line, and writes a chart and the verdict to --report-dir. Any loss, duplicate,
reordering or problem makes locust exit with 1.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # locust imports this file by path: make `loadtest` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent
import requests
from locust import User, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from loadtest.ledger import Inbox, Ledger, NotificationRecord, PublicationRecord, Subscription, verify
from loadtest.report import summary, write_report
from loadtest.series import TimeSeries
from loadtest.wsclient import CallError, ClientClosed, ProtocolClient
from tidings.server.gateway.auth import (
    issue_token,  # here: importing PyJWT's crypto in a greenlet stalls all users
)

__all__ = [
    "BroadcastListener",
    "BroadcastPublisher",
    "ChatUser",
    "LossyChatUser",
    "NotificationBackend",
    "NotifiedUser",
    "ReconnectingChatUser",
]

logger = logging.getLogger("tidings.loadtest")

_QUIESCE = "tidings:quiesce"  # master -> workers: stop publishing, keep receiving
_SNAPSHOT = "tidings:snapshot"  # master -> workers: send your ledger now
_LEDGER = "tidings:ledger"  # worker -> master: here it is
_MISSING = (404, 405)  # what a node without the notifications API answers


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser  # locust's own parser: only it knows is_secret and passes values on to the workers
    group.add_argument(
        "--nodes", default="", env_var="TIDINGS_NODES", help="comma-separated node URLs (else --host)"
    )
    group.add_argument(
        "--jwt-secret",
        default="",
        env_var="TIDINGS_JWT_SECRET",
        is_secret=True,
        help="sign tokens with it (else POST /api/dev/token, dev mode)",
    )
    group.add_argument(
        "--api-key",
        default="",
        env_var="TIDINGS_API_KEY",
        is_secret=True,
        help="for the HTTP API (default: the first of $TIDINGS_API_KEYS)",
    )
    group.add_argument("--codec", default="json", choices=["json", "msgpack"])
    group.add_argument("--room-size", default="5-20", help="chat: users per room, N or a range LOW-HIGH")
    group.add_argument("--chat-rate", type=float, default=1.0, help="chat: messages/s per user")
    group.add_argument("--broadcast-room", default="lt-broadcast", help="broadcast: the room's name")
    group.add_argument("--broadcast-rate", type=float, default=10.0, help="broadcast: messages/s")
    group.add_argument(
        "--notify-rate", type=float, default=1.0, help="notifications: per user and for the topic"
    )
    group.add_argument(
        "--reconnect-share", type=float, default=0.3, help="reconnect storm: share dropped per wave"
    )
    group.add_argument(
        "--reconnect-interval", type=float, default=5.0, help="reconnect storm: seconds between waves"
    )
    group.add_argument(
        "--drop-share", type=float, default=0.2, help="LossyChatUser: share of receipts discarded"
    )
    group.add_argument(
        "--drop-node",
        type=int,
        default=-1,
        help="LossyChatUser: discard only on the node of this --nodes index (-1: any)",
    )
    group.add_argument(
        "--drain", type=float, default=2.0, help="seconds a delivery may take before it counts"
    )
    group.add_argument("--report-dir", default="loadtest/reports", help="where the chart and verdict go")


# --- per-process state -----------------------------------------------------------------------------------


class _Recorder:
    """What this process saw during one test: the ledger and the latency series."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ledger = Ledger()
        self.series = TimeSeries()
        self.tag = secrets.token_hex(3)  # names this process's rooms and users
        self.users = itertools.count()
        self.node_ids: dict[str, str] = {}
        self.quiet = False  # set at the end of a run: publish nothing more, let deliveries land
        self.rooms = itertools.count()
        self.room = ""
        self.room_left = 0

    def next_room(self, size: str) -> str:
        """The chat room for the next user: rooms fill up one after the other, each of a size drawn from ``size``."""
        if self.room_left <= 0:
            low, _, high = size.partition("-")
            self.room_left = random.randint(int(low), int(high or low))
            self.room = f"room:lt-{self.tag}-{next(self.rooms)}"
        self.room_left -= 1
        return self.room

    def snapshot(self) -> dict[str, Any]:
        return {"ledger": self.ledger.encode(time.time()), "series": self.series.encode()}


class _Collector:
    """The master's inbox of worker ledgers."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, Any]] = []

    def gather(self, runner: MasterRunner, drain: float, timeout: float = 60.0) -> list[dict[str, Any]]:
        self.snapshots = []
        expected = runner.worker_count
        runner.send_message(_QUIESCE)
        gevent.sleep(drain)
        runner.send_message(_SNAPSHOT)
        deadline = time.monotonic() + timeout
        while len(self.snapshots) < expected and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if len(self.snapshots) < expected:
            RECORDER.ledger.problem(f"only {len(self.snapshots)} of {expected} workers sent their ledger")
            return [*self.snapshots, RECORDER.snapshot()]
        return list(self.snapshots)


RECORDER = _Recorder()
COLLECTOR = _Collector()


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.register_message(_QUIESCE, lambda environment, msg, **kw: setattr(RECORDER, "quiet", True))
        runner.register_message(
            _SNAPSHOT, lambda environment, msg, **kw: runner.send_message(_LEDGER, RECORDER.snapshot())
        )
    elif isinstance(runner, MasterRunner):
        runner.register_message(_LEDGER, lambda environment, msg, **kw: COLLECTOR.snapshots.append(msg.data))


@events.test_start.add_listener
def _test_start(environment: Environment, **_: Any) -> None:
    RECORDER.reset()


@events.test_stopping.add_listener
def _test_stopping(environment: Environment, **_: Any) -> None:
    # Runs on the master (or the only process) while the users still run. Publishing stops first and
    # the users go on receiving for --drain seconds, so even the last publications are verified; then
    # every process snapshots its ledger. The stop itself cuts nothing short.
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    drain = environment.parsed_options.drain
    if isinstance(runner, MasterRunner):
        snapshots = COLLECTOR.gather(runner, drain)
    else:
        RECORDER.quiet = True
        gevent.sleep(drain)
        snapshots = [RECORDER.snapshot()]
    _conclude(environment, snapshots)


@events.quitting.add_listener
def _quitting(environment: Environment, **_: Any) -> None:
    verdict = getattr(environment, "tidings_verdict", None)
    if verdict is not None and not verdict.ok:
        environment.process_exit_code = 1


def _conclude(environment: Environment, snapshots: list[dict[str, Any]]) -> None:
    options = environment.parsed_options
    ledgers = [Ledger.decode(s["ledger"]) for s in snapshots]
    series = TimeSeries()
    for snapshot in snapshots:
        series.merge(TimeSeries.decode(snapshot["series"]))
    verdict = verify(ledgers, drain=options.drain)
    environment.tidings_verdict = verdict  # type: ignore[attr-defined]
    result = summary(verdict, series)
    svg, data = write_report(options.report_dir, verdict, series)
    print("\nTidings fan-out verdict\n" + verdict.table(), flush=True)
    print(f"chart: {svg}\nverdict: {data}", flush=True)
    print("TIDINGS-VERDICT " + json.dumps(result, separators=(",", ":")), flush=True)
    if not verdict.ok:
        logger.error("fan-out verification FAILED: %s", "; ".join(verdict.failures()))


# --- helpers ---------------------------------------------------------------------------------------------


def _node_urls(environment: Environment) -> list[str]:
    nodes = [u.strip().rstrip("/") for u in (environment.parsed_options.nodes or "").split(",") if u.strip()]
    if not nodes and environment.host:
        nodes = [environment.host.rstrip("/")]
    if not nodes:
        raise StopUser("give --nodes URL[,URL...] or --host URL")
    return [u if "://" in u else f"http://{u}" for u in nodes]


def _ws_url(base: str) -> str:
    parts = urlsplit(base)
    return f"{'wss' if parts.scheme in ('https', 'wss') else 'ws'}://{parts.netloc}/ws"


def _fire(
    environment: Environment, request_type: str, name: str, ms: float, exception: Exception | None = None
) -> None:
    environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=ms,
        response_length=0,
        exception=exception,
        context={},
    )


class _Problem(Exception):
    """A failure shown in locust's statistics (duplicates, failed recoveries)."""


# --- users -----------------------------------------------------------------------------------------------


class TidingsUser(User):
    """One WebSocket connection: connect, subscribe, receive, account; reconnect with ``since`` when lost."""

    abstract = True

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        self.urls = _node_urls(self.environment)
        self.index = next(RECORDER.users)
        self.user_id = f"lt-{RECORDER.tag}-{self.index}"
        self.slot = self.index + int(getattr(self.environment.runner, "worker_index", 0) or 0)
        self.subscriptions: dict[str, Subscription] = {}
        self.client: ProtocolClient | None = None
        self.node = "?"
        self.lost_at: float | None = None
        self.shift = 0  # which node, counted from this user's slot
        self.base = self.urls[self.slot % len(self.urls)]
        self.http = requests.Session()
        self.http.trust_env = False
        self.open(self.channels())

    def on_stop(self) -> None:
        now = time.time()
        for subscription in self.subscriptions.values():
            if subscription.end_ts is None:
                subscription.end_ts = now
        if self.client is not None:
            self.client.close()

    def channels(self) -> list[str]:
        """The channels this user subscribes to on connect."""
        return []

    # --- connecting --------------------------------------------------------------------------------

    def token(self, base: str) -> str:
        if self.options.jwt_secret:
            return issue_token(self.user_id, self.options.jwt_secret, ttl=6 * 3600)
        response = self.http.post(f"{base}/api/dev/token", json={"user": self.user_id}, timeout=30)
        response.raise_for_status()
        return str(response.json()["token"])

    def open(self, channels: list[str]) -> None:
        """Connect to node ``slot + shift``; channels already known are resubscribed with ``since``."""
        base = self.base = self.urls[(self.slot + self.shift) % len(self.urls)]
        started = time.time()
        client = ProtocolClient(
            _ws_url(base), codec=self.options.codec, on_push=self.on_push, on_close=self.on_lost
        )
        subscribe = []
        for channel in channels:
            known = self.subscriptions.get(channel)
            since = {"epoch": known.epoch, "offset": known.highest} if known is not None else None
            subscribe.append({"channel": channel, **({"since": since} if since else {})})
        self.client = client
        try:
            client.call("connect", token=self.token(base), subscribe=subscribe, on_result=self.connected)
        except (CallError, ClientClosed, gevent.Timeout) as exc:
            _fire(self.environment, "ws", "connect", (time.time() - started) * 1000, exc)
            raise StopUser(f"connect failed: {exc}") from exc
        _fire(self.environment, "ws", "connect", (time.time() - started) * 1000)

    def connected(self, result: dict[str, Any], received_at: float) -> None:
        """The connect reply, handled in the reader before any later frame."""
        self.node = str(result["node"])
        self.lost_at = None
        for channel, info in result.get("channels", {}).items():
            if channel.startswith("user:"):
                continue
            if "error" in info:
                RECORDER.ledger.problem(f"subscribe to {channel} failed: {info['error']}")
                continue
            known = self.subscriptions.get(channel)
            if known is None:
                subscription = Subscription(channel, str(info["epoch"]), int(info["offset"]), self.node)
                self.subscriptions[channel] = subscription
                RECORDER.ledger.subscriptions.append(subscription)
                continue
            self.resumed(known, info, received_at)

    def resumed(self, subscription: Subscription, info: dict[str, Any], received_at: float) -> None:
        if not info.get("recovered", False) or info.get("epoch") != subscription.epoch:
            RECORDER.ledger.problem(
                f"recovery of {subscription.channel} failed on node {self.node} (recovered: false)"
            )
            _fire(self.environment, "ws", "recover", 0, _Problem("recovered: false"))
        subscription.resume(subscription.highest, self.node)
        subscription.end_ts = None
        for publication in info.get("publications", []):
            self.publication(publication, received_at, recovered=True)

    def on_lost(self, code: int | None) -> None:
        """The connection ended under us; the next task reconnects (a real client would, with since)."""
        self.lost_at = time.time()
        for subscription in self.subscriptions.values():
            subscription.end_ts = self.lost_at  # nothing later is owed until it resumes

    def ensure_connected(self) -> bool:
        """Reconnect to the next node if the connection was lost; False if it could not."""
        if self.client is not None and self.client.live:
            return True
        self.shift += 1  # the next node: recovery must work across nodes
        try:
            self.open(list(self.subscriptions))
        except StopUser:
            return False
        _fire(self.environment, "ws", "reconnect", 0)
        return True

    # --- receiving ---------------------------------------------------------------------------------

    def on_push(self, message: dict[str, Any], received_at: float) -> None:
        kind = message.get("push")
        if kind == "publication":
            self.publication(message, received_at)
        elif kind == "notification":
            self.notification(message.get("notification", {}), received_at)

    def publication(self, message: dict[str, Any], received_at: float, *, recovered: bool = False) -> None:
        subscription = self.subscriptions.get(message.get("channel", ""))
        if subscription is None or "offset" not in message:
            return
        data = message.get("data")
        data = data if isinstance(data, dict) else {}
        if not subscription.receive(str(message["epoch"]), int(message["offset"]), self.node):
            _fire(
                self.environment, "deliver", "duplicate", 0, _Problem(f"duplicate offset {message['offset']}")
            )
            return
        sent = data.get("t")
        if isinstance(sent, (int, float)):
            kind = "recovered" if recovered else ("same-node" if data.get("n") == self.node else "cross-node")
            ms = max(0.0, (received_at - sent) * 1000)
            _fire(self.environment, "deliver", kind, ms)
            RECORDER.series.add(received_at, kind, ms)

    def notification(self, notification: dict[str, Any], received_at: float) -> None:
        """Notifications are accounted by users that keep an inbox (NotifiedUser)."""

    # --- publishing --------------------------------------------------------------------------------

    def publish(self, channel: str) -> None:
        if not self.ensure_connected() or self.client is None or RECORDER.quiet:
            return
        sent = time.time()
        try:
            result = self.client.call(
                "publish", channel=channel, data={"t": sent, "n": self.node, "u": self.user_id}
            )
        except (CallError, ClientClosed, gevent.Timeout) as exc:
            _fire(self.environment, "ws", "publish", (time.time() - sent) * 1000, exc)
            return
        acked = time.time()
        RECORDER.ledger.publications.append(
            PublicationRecord(channel, str(result["epoch"]), int(result["offset"]), self.node, sent, acked)
        )
        _fire(self.environment, "ws", "publish", (acked - sent) * 1000)


class ChatUser(TidingsUser):
    """Chat: rooms of --room-size users (5-20; consecutive users of a process), each at --chat-rate msg/s."""

    def wait_time(self) -> float:
        return random.uniform(0.5, 1.5) / max(self.environment.parsed_options.chat_rate, 1e-3)

    def channels(self) -> list[str]:
        self.room = RECORDER.next_room(self.environment.parsed_options.room_size)
        return [self.room]

    @task
    def chat(self) -> None:
        self.publish(self.room)


class ReconnectingChatUser(ChatUser):
    """Chat with a reconnect storm: every --reconnect-interval s, --reconnect-share of users drop at once.

    A dropped user reconnects to another node with ``since`` and must get exactly what it missed.
    """

    last_wave = -1

    @task
    def chat(self) -> None:
        interval = max(self.options.reconnect_interval, 0.5)
        wave = int(time.time() / interval)
        if wave != self.last_wave:
            first, self.last_wave = self.last_wave < 0, wave
            chosen = random.Random(f"{self.user_id}:{wave}").random() < self.options.reconnect_share
            if not first and chosen and not RECORDER.quiet and self.client is not None and self.client.live:
                self.client.drop()
                self.on_lost(None)
                _fire(self.environment, "ws", "drop", 0)
        self.publish(self.room)


class LossyChatUser(ChatUser):
    """The verifier's self-test: a chat user that discards --drop-share of the publications it receives
    (on the node --drop-node only, when given), as a node dropping messages would. Its runs must fail."""

    def publication(self, message: dict[str, Any], received_at: float, *, recovered: bool = False) -> None:
        drop_node = self.options.drop_node
        on_target = drop_node < 0 or self.urls[drop_node % len(self.urls)] == self.base
        if on_target and random.random() < self.options.drop_share:
            return
        super().publication(message, received_at, recovered=recovered)


class BroadcastListener(TidingsUser):
    """Broadcast: a member of the one large room; it only listens."""

    def wait_time(self) -> float:
        return 1.0

    def channels(self) -> list[str]:
        return [f"room:{self.options.broadcast_room}"]

    @task
    def listen(self) -> None:
        self.ensure_connected()


class BroadcastPublisher(TidingsUser):
    """Broadcast: the one publisher of the large room, at --broadcast-rate msg/s."""

    fixed_count = 1

    def wait_time(self) -> float:
        return 1.0 / max(self.environment.parsed_options.broadcast_rate, 1e-3)

    @task
    def announce(self) -> None:
        self.publish(f"room:{self.options.broadcast_room}")


# --- notifications -----------------------------------------------------------------------------------------


class _Backend:
    """Backend calls over the HTTP API, with the API key; knows which node each URL is."""

    def __init__(self, user: TidingsUser) -> None:
        self.user = user
        options = user.options
        keys = os.environ.get("TIDINGS_API_KEYS", "")
        self.api_key = options.api_key or (keys.split(",")[0].strip() if keys else "")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def node_of(self, base: str) -> str:
        node = RECORDER.node_ids.get(base)
        if node is None:
            node = RECORDER.node_ids[base] = str(
                self.user.http.get(f"{base}/healthz", timeout=10).json()["node"]
            )
        return node

    def request(
        self, method: str, base: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        started = time.time()
        response = self.user.http.request(
            method, f"{base}{path}", json=body, headers=self.headers(), timeout=30
        )
        name = f"{method} {path.split('/')[1]}/{path.split('/')[2]}" if path.count("/") >= 2 else path
        ms = (time.time() - started) * 1000
        if response.status_code in _MISSING:
            message = (
                f"the notifications API is missing: {method} {path} answered HTTP {response.status_code} "
                f"on {base} (the notifications shape needs POST /api/notifications and PUT /api/topics/...)"
            )
            RECORDER.ledger.problem(message)
            logger.error(message)
            _fire(self.user.environment, "http", name, ms, _Problem(message))
            raise StopUser(message)
        if response.status_code >= 400:
            error = _Problem(f"HTTP {response.status_code}: {response.text[:200]}")
            _fire(self.user.environment, "http", name, ms, error)
            raise error
        _fire(self.user.environment, "http", name, ms)
        return dict(response.json() or {})

    def notify(self, base: str, *, users: tuple[str, ...] = (), topic: str | None = None) -> None:
        if RECORDER.quiet:
            return
        key = f"{RECORDER.tag}-{secrets.token_hex(6)}"
        node = self.node_of(base)
        body: dict[str, Any] = {
            "type": "loadtest",
            "severity": "info",
            "title": "load test",
            "body": "",
            "data": {"k": key, "t": time.time(), "n": node},
        }
        body.update({"users": list(users)} if users else {"topic": topic})
        sent = time.time()
        try:
            self.request("POST", base, "/api/notifications", body)
        except _Problem:
            return
        RECORDER.ledger.notifications.append(NotificationRecord(key, users, topic, node, sent, time.time()))


class NotifiedUser(TidingsUser):
    """Notifications: a connected user subscribed to the load-test topic; it asks a backend (through
    another node) to notify it at --notify-rate, and receives those and the topic's notifications."""

    def wait_time(self) -> float:
        return random.uniform(0.5, 1.5) / max(self.environment.parsed_options.notify_rate, 1e-3)

    def on_start(self) -> None:
        super().on_start()
        self.backend = _Backend(self)
        base = self.urls[self.slot % len(self.urls)]
        self.backend.request("PUT", base, f"/api/topics/{_topic()}/subscribers/{self.user_id}")
        self.inbox = Inbox(self.user_id, self.node, time.time(), topics={_topic()})
        RECORDER.ledger.inboxes.append(self.inbox)

    def connected(self, result: dict[str, Any], received_at: float) -> None:
        super().connected(result, received_at)
        inbox = getattr(self, "inbox", None)
        if inbox is not None:
            inbox.segments.append((received_at, self.node))

    def notification(self, notification: dict[str, Any], received_at: float) -> None:
        data = notification.get("data")
        inbox = getattr(self, "inbox", None)
        if not isinstance(data, dict) or "k" not in data or inbox is None:
            return
        if not inbox.receive(str(data["k"]), self.node):
            _fire(
                self.environment, "deliver", "duplicate", 0, _Problem(f"duplicate notification {data['k']}")
            )
            return
        sent = data.get("t")
        if isinstance(sent, (int, float)):
            ms = max(0.0, (received_at - sent) * 1000)
            _fire(self.environment, "deliver", "notification", ms)
            RECORDER.series.add(received_at, "notification", ms)

    @task
    def notify_me(self) -> None:
        # Through the next node, so the notification crosses the backplane when there are several.
        self.backend.notify(self.urls[(self.slot + 1) % len(self.urls)], users=(self.user_id,))


class NotificationBackend(TidingsUser):
    """Notifications: one backend notifying the load-test topic at --notify-rate."""

    fixed_count = 1

    def wait_time(self) -> float:
        return 1.0 / max(self.environment.parsed_options.notify_rate, 1e-3)

    def on_start(self) -> None:
        super().on_start()
        self.backend = _Backend(self)

    @task
    def notify_topic(self) -> None:
        self.backend.notify(self.urls[self.slot % len(self.urls)], topic=_topic())


def _topic() -> str:
    return "lt.notifications"
