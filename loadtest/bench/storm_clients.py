"""The clients of the reconnect-storm benchmark (``loadtest/storm.py``): lean, and as strict as the SDK.

Each client is one FastWebSocket to a node, subscribed (by its ``connect``) to its room; the
node subscribes its personal ``user:`` channel. It remembers the last ``{epoch, offset}`` of
each channel, as ``tidings.client.Connection`` does, and counts every publication of its room
by offset (``driver.Receiver``: duplicates and reordering are counted, gaps kept). When its
socket closes, it reconnects like the SDK: before attempt ``n`` it waits a random time in
``[0, min(max_backoff, min_backoff * 2**n)]`` (full jitter), then sends ``connect`` listing
every channel with ``since``; a refused handshake (HTTP 503), a close before the reply, an
error reply or a timeout is a failed attempt (counted by reason), and the next one follows
the backoff. Recovered publications in the reply are counted like live ones, before them.

Where a client reconnects: not to the node that dropped it, alternating between the others by
client and by attempt, as a load balancer that took the node out would spread them.

The publisher is one more connection (on the first node), publishing to the rooms round-robin
at ``rate`` messages a second; its acknowledged offsets per room are what every member owes.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtest.bench.dial import Closed, Refused, dial, failure_reason
from loadtest.bench.driver import Receiver, Stream
from loadtest.fastws import FastWebSocket, HandshakeError, OnClose, OnMessage

__all__ = ["Client", "Pool", "Publisher", "backoff", "reconnect_target"]


def backoff(attempt: int, low: float, high: float) -> float:
    """The SDK's full jitter: uniform in ``[0, min(high, low * 2**attempt)]``."""
    return random.uniform(0.0, min(high, low * 2**attempt))


def reconnect_target(index: int, lost: int, attempt: int, nodes: int) -> int:
    """The node client ``index`` tries after losing node ``lost``: one of the others, alternating."""
    if nodes < 2:
        return lost
    return (lost + 1 + (index // nodes + attempt) % (nodes - 1)) % nodes


class Client(Receiver):
    """One subscriber: its room's stream, its positions, and the story of its reconnect."""

    __slots__ = (
        "attempt_started",
        "attempts",
        "closes",
        "dial_ms",
        "index",
        "lost_at",
        "moved",
        "positions",
        "reconnecting",
        "recovered_at",
        "story",
        "stream",
        "token",
        "unrecovered",
        "ws",
    )

    def __init__(self, index: int, node: int, room: int, token: str) -> None:
        super().__init__(node, room)
        self.index = index
        self.token = token
        self.ws: FastWebSocket | None = None
        self.stream = Stream()
        self.positions: dict[str, tuple[str, int]] = {}  # channel -> last (epoch, offset) seen
        self.moved = False  # it was on the killed node
        self.reconnecting = False  # one reconnect loop at a time
        self.lost_at = 0.0
        self.recovered_at = 0.0
        self.attempts = 0  # reconnect attempts, the successful one included
        self.attempt_started = 0.0
        self.dial_ms = 0.0  # the successful attempt: from its TCP connect to the connect reply
        self.closes: list[int] = []
        self.unrecovered = 0  # channels answered recovered: false
        self.story: list[str] = []  # what its reconnects did, told when it lost something


@dataclass
class Publisher:
    """One connection publishing to every room in turn; what each room had acknowledged."""

    rooms: Sequence[str]
    ws: FastWebSocket | None = None
    next_id: int = 2
    sent: int = 0
    pending: dict[int, int] = field(default_factory=dict)  # command id -> room
    acked: list[set[int]] = field(default_factory=list)
    epochs: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    closed: int | None = None  # the close code, if its socket closed before the end

    def __post_init__(self) -> None:
        self.acked = [set() for _ in self.rooms]
        self.epochs = ["" for _ in self.rooms]

    def publish(self) -> None:
        assert self.ws is not None
        room = self.sent % len(self.rooms)
        self.sent += 1
        command_id, self.next_id = self.next_id, self.next_id + 1
        self.pending[command_id] = room
        message = {"id": command_id, "op": "publish", "channel": self.rooms[room], "data": {"n": self.sent}}
        self.ws.send(json.dumps(message, separators=(",", ":")))

    def on_message(self, frame: bytes, text: bool) -> None:
        for line in frame.split(b"\n"):
            if not line or line.startswith(b'{"push"'):
                continue
            reply = json.loads(line)
            room = self.pending.pop(reply.get("id"), None)
            if room is None:
                continue
            result = reply.get("result")
            if result is None or "offset" not in result:
                code = str(reply.get("error", {}).get("code"))
                self.errors[code] = self.errors.get(code, 0) + 1
                continue
            self.acked[room].add(int(result["offset"]))
            self.epochs[room] = result["epoch"]

    def on_close(self, code: int) -> None:
        self.closed = code

    async def run(self, rate: float, stop: asyncio.Event) -> None:
        """Publish at ``rate`` a second (catching up when late) until ``stop``."""
        start = time.perf_counter()
        while not stop.is_set() and self.ws is not None and self.ws.close_code is None:
            due = int((time.perf_counter() - start) * rate) + 1 - self.sent
            for _ in range(max(due, 0)):
                self.publish()
            delay = start + self.sent / rate - time.perf_counter()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass


@dataclass
class Pool:
    """Every client's connection, its accounting, and its reconnects."""

    ws_urls: Sequence[str]
    rooms: Sequence[str]
    min_backoff: float = 0.1
    max_backoff: float = 5.0
    open_timeout: float = 5.0  # the SDK's: TCP connect and handshake
    reply_timeout: float = 10.0  # the SDK's call timeout: the connect reply
    clients: list[Client] = field(default_factory=list)
    closed: dict[int, int] = field(default_factory=dict)  # close code -> times a client's socket got it
    attempt_failures: dict[str, int] = field(default_factory=dict)  # failed reconnect attempts by reason
    unrecovered: dict[str, int] = field(default_factory=dict)  # channel kind -> recovered: false answers
    epoch_changes: int = 0  # publications of a room under another epoch than the first seen
    duplicates_by: dict[str, int] = field(default_factory=dict)  # "moved|stayed/reply|live" -> count
    stale: dict[str, int] = field(default_factory=dict)  # frames and closes of a socket no longer current
    pushed_before_reply: int = 0  # live publications a node sent on a new socket before its connect reply
    stopping: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _decoded: dict[bytes, list[dict[str, Any]]] = field(default_factory=dict)
    _room_epochs: dict[int, str] = field(default_factory=dict)

    # --- receiving ---------------------------------------------------------------------------------

    def decode(self, frame: bytes) -> list[dict[str, Any]]:
        """The messages of a frame; every member of a room gets the same bytes, decoded once."""
        messages = self._decoded.get(frame)
        if messages is None:
            messages = [json.loads(line) for line in frame.split(b"\n") if line]
            if len(self._decoded) >= 4096:
                self._decoded.clear()
            self._decoded[frame] = messages
        return messages

    def deliver(self, client: Client, message: dict[str, Any], source: str = "live") -> None:
        """One publication for ``client``: ``live``, or recovered in a connect ``reply``."""
        offset = message.get("offset")
        if offset is None:
            return  # ephemeral
        channel, epoch = message["channel"], str(message["epoch"])
        if channel == self.rooms[client.room]:
            first = self._room_epochs.setdefault(client.room, epoch)
            if epoch != first:
                self.epoch_changes += 1
            if not client.count(client.stream, offset):
                key = f"{'moved' if client.moved else 'stayed'}/{source}"
                self.duplicates_by[key] = self.duplicates_by.get(key, 0) + 1
        known = client.positions.get(channel)
        if known is None or known[0] != epoch or known[1] < offset:
            client.positions[channel] = (epoch, offset)

    def reader(self, client: Client, ws: FastWebSocket) -> OnMessage:
        def on_message(frame: bytes, text: bool) -> None:
            if ws is not client.ws:
                self.stale["frames"] = self.stale.get("frames", 0) + 1
            for message in self.decode(frame):
                if message.get("push") == "publication":
                    self.deliver(client, message)

        return on_message

    def apply(self, client: Client, result: dict[str, Any]) -> None:
        """A connect result: recovered publications first, then the positions to go on from."""
        for channel, state in result["channels"].items():
            if "error" in state:
                kind = f"error {state['error'].get('code')}"
                self.unrecovered[kind] = self.unrecovered.get(kind, 0) + 1
                continue
            if state.get("recovered") is False:
                client.unrecovered += 1
                kind = channel.split(":", 1)[0]
                self.unrecovered[kind] = self.unrecovered.get(kind, 0) + 1
            publications = state.get("publications", ())
            for publication in publications:
                self.deliver(client, publication, "reply")
            top, known = (state["epoch"], int(state["offset"])), client.positions.get(channel)
            if channel == self.rooms[client.room] and len(client.story) < 20:
                offsets = [p["offset"] for p in publications]
                client.story.append(
                    f"reply: top {top[1]}, recovered {state.get('recovered')}, publications {offsets[:10]}"
                )
            if known is None or known[0] != top[0] or known[1] < top[1]:
                client.positions[channel] = top
            if channel == self.rooms[client.room] and client.stream.highest == 0 and not client.received:
                client.stream.highest = top[1]  # the first subscribe: owed what comes after it

    def accept(self, client: Client, node: int) -> Any:
        """The frame callback until the connect reply: pushes before it, the reply, pushes after it."""

        def accept(ws: FastWebSocket, frame: bytes) -> Any:
            answer = None
            for line in frame.split(b"\n"):
                if not line:
                    continue
                message = json.loads(line)
                if answer is None and message.get("id") == 1:
                    if "error" in message:
                        raise Refused(f"error {message['error'].get('code')}")
                    answer = message["result"]
                    client.ws, client.node = ws, node  # current from here: its frames count
                    self.apply(client, answer)
                elif message.get("push") == "publication":
                    if (
                        answer is None
                    ):  # the protocol says live publications follow the reply, never precede it
                        self.pushed_before_reply += 1
                        if len(client.story) < 20:
                            since = (time.perf_counter() - client.attempt_started) * 1000
                            client.story.append(
                                f"publication {message['channel']} {message.get('offset')} before the reply "
                                f"({since:.0f} ms into the attempt)"
                            )
                    self.deliver(client, message)
            return answer

        return accept

    # --- connecting --------------------------------------------------------------------------------

    def connect_message(self, client: Client) -> str:
        subscribe: list[dict[str, Any]] = []
        for channel in sorted({self.rooms[client.room], *client.positions}):
            entry: dict[str, Any] = {"channel": channel}
            if channel in client.positions:
                epoch, offset = client.positions[channel]
                entry["since"] = {"epoch": epoch, "offset": offset}
            subscribe.append(entry)
        message = {"id": 1, "op": "connect", "token": client.token, "subscribe": subscribe}
        return json.dumps(message, separators=(",", ":"))

    async def open(self, client: Client, node: int) -> None:
        """Connect ``client`` to ``node`` and apply the reply; raises as :func:`connects.dial` does."""
        await dial(
            self.ws_urls[node],
            "tidings.json",
            self.connect_message(client),
            self.accept(client, node),
            timeout=self.open_timeout,
            reply_timeout=self.reply_timeout,
            then=lambda ws: (self.reader(client, ws), self.on_close(client, ws)),
        )

    async def open_all(self, clients: list[Client], concurrency: int) -> dict[str, int]:
        """Connect every client to its node with ``concurrency`` in flight; failures by reason."""
        self.clients = clients
        failures: dict[str, int] = {}
        pending = iter(clients)

        async def worker() -> None:
            for client in pending:
                try:
                    await self.open(client, client.node)
                except (OSError, TimeoutError, Closed, Refused) as exc:
                    reason = failure_reason(exc)
                    failures[reason] = failures.get(reason, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return failures

    # --- losing and reconnecting -------------------------------------------------------------------

    def on_close(self, client: Client, ws: FastWebSocket) -> OnClose:
        def closed(code: int) -> None:
            self.closed[code] = self.closed.get(code, 0) + 1
            if ws is not client.ws or client.reconnecting:
                self.stale["closes"] = self.stale.get("closes", 0) + 1
                return
            client.closes.append(code)
            if self.stopping:
                return
            client.lost_at = client.lost_at or time.perf_counter()  # the first loss
            client.reconnecting = True
            task = asyncio.get_running_loop().create_task(self.reconnect(client, client.node))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        return closed

    async def reconnect(self, client: Client, lost: int) -> None:
        """Back off, try another node, until connected (or the run stops)."""
        try:
            await self._reconnect(client, lost)
        finally:
            client.reconnecting = False

    async def _reconnect(self, client: Client, lost: int) -> None:
        attempt = 0
        while not self.stopping:
            await asyncio.sleep(backoff(attempt, self.min_backoff, self.max_backoff))
            node = reconnect_target(client.index, lost, attempt, len(self.ws_urls))
            attempt += 1
            client.attempts += 1
            started = client.attempt_started = time.perf_counter()
            since = client.positions.get(self.rooms[client.room], ("", 0))[1]
            if len(client.story) < 20:
                client.story.append(
                    f"attempt {attempt} to node {node + 1}, since {since}, had {client.stream.highest}"
                )
            try:
                await self.open(client, node)
            except (OSError, TimeoutError, Closed, Refused, HandshakeError) as exc:  # a 503 is shed: retry
                reason = failure_reason(exc)
                if len(client.story) < 20:
                    client.story.append(
                        f"failed: {reason} after {(time.perf_counter() - started) * 1000:.0f} ms"
                    )
                self.attempt_failures[reason] = self.attempt_failures.get(reason, 0) + 1
                if isinstance(exc, Closed):
                    self.closed[exc.code] = self.closed.get(exc.code, 0) + 1
                continue
            if client.ws is None or client.ws.close_code is not None:  # closed right after its reply
                self.attempt_failures["closed after the reply"] = (
                    self.attempt_failures.get("closed after the reply", 0) + 1
                )
                continue
            if not client.recovered_at:  # the first time back (a later drop is in ``closes``)
                client.recovered_at = time.perf_counter()
                client.dial_ms = (client.recovered_at - started) * 1000
            return

    def close_all(self) -> None:
        self.stopping = True
        for client in self.clients:
            if client.ws is not None:
                client.ws.close()
        for task in self.tasks:
            task.cancel()

    # --- the verdict -------------------------------------------------------------------------------

    def account(self, publisher: Publisher) -> dict[str, Any]:
        """Every client must hold every acknowledged publication of its room once, in order."""
        lost = duplicates = reordered = incomplete = 0
        lost_by: dict[str, int] = {"moved": 0, "stayed": 0}
        examples: list[dict[str, Any]] = []
        for client in self.clients:
            acked = publisher.acked[client.room]
            last = max(acked, default=0)
            gaps = sorted(client.stream.missing(last) & acked)
            missing = len(gaps)
            if missing and len(examples) < 5:
                story = {"client": client.index, "room": client.room, "missing": gaps[:10]}
                examples.append({**story, "acked_last": last, "story": client.story})
            lost += missing
            lost_by["moved" if client.moved else "stayed"] += missing
            duplicates += client.duplicates
            reordered += client.reordered
            incomplete += missing > 0
        return {
            "lost": lost,
            "lost_by_group": lost_by,
            "loss_examples": examples,
            "clients_missing_something": incomplete,
            "duplicates": duplicates,
            "duplicates_by": dict(sorted(self.duplicates_by.items())),
            "stale_socket_events": self.stale,
            "pushed_before_reply": self.pushed_before_reply,
            "reordered": reordered,
            "epoch_changes": self.epoch_changes,
            "deliveries": sum(c.received for c in self.clients),
        }
