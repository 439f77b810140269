"""Abuse limits (pure): command rate per connection, connections per node and per user.

Nothing here does I/O or reads a clock: callers pass ``now`` (``time.monotonic()``),
so every rule is a synchronous unit test (``tests/test_limits.py``).

* :class:`TokenBucket` — ``rate`` tokens a second, at most ``burst`` saved up.
* :class:`CommandLimiter` — one per connection. A command over the rate is
  answered 429 (``Verdict.REJECT``, the connection goes on); a client that keeps
  sending regardless is cut off (``Verdict.CLOSE``, close 4029, reconnect later).
* :class:`ConnectionLimits` — one per node: open sockets on the node and open
  sessions per user on the node.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum

__all__ = ["REJECTIONS_BEFORE_CLOSE", "CommandLimiter", "ConnectionLimits", "TokenBucket", "Verdict"]

REJECTIONS_BEFORE_CLOSE = 20
"""Commands rejected in a row (each answered 429) before the connection is closed with 4029."""


class Verdict(Enum):
    ALLOW = "allow"
    REJECT = "reject"  # answer 429, keep the connection
    CLOSE = "close"  # close 4029: the client ignored the 429s


class TokenBucket:
    """A token bucket: ``take`` succeeds while tokens are left; they refill at ``rate`` a second.

    Guarantee: over any interval of ``t`` seconds at most ``burst + rate * t`` takes succeed.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, *, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)  # a new client may send its burst at once (connect + subscribes)
        self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are enough; False (and nothing taken) otherwise."""
        elapsed = now - self._stamp
        if elapsed > 0:  # a clock that goes backwards must not mint tokens
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


class CommandLimiter(TokenBucket):
    """The command rate of one connection; every frame counts, valid or not."""

    __slots__ = ("_rejections",)

    def __init__(self, rate: float, burst: float, *, now: float) -> None:
        super().__init__(rate, burst, now=now)
        self._rejections = 0

    def check(self, now: float) -> Verdict:
        """The verdict for one more command arriving at ``now``.

        Returns:
            ALLOW while within the rate; REJECT for a command over it; CLOSE once
            ``REJECTIONS_BEFORE_CLOSE`` commands in a row were rejected.
        """
        if self.take(now):
            self._rejections = 0
            return Verdict.ALLOW
        self._rejections += 1
        return Verdict.CLOSE if self._rejections > REJECTIONS_BEFORE_CLOSE else Verdict.REJECT


class ConnectionLimits:
    """Open sockets on this node and open sessions per user on this node.

    Guarantees: ``open_socket`` succeeds at most ``max_connections`` times more
    than ``close_socket`` was called; ``begin_handshake`` at most ``max_handshakes`` times
    more than ``end_handshake`` (a node sheds connects it cannot serve soon, instead of
    slowing every one of them down); ``add_user`` likewise per user with
    ``max_user_connections``. The per-user count is per node: behind a load
    balancer a user may hold up to ``nodes * max_user_connections`` sessions.
    """

    __slots__ = (
        "_users",
        "accepted",
        "handshakes",
        "max_connections",
        "max_handshakes",
        "max_user_connections",
        "refused",
        "sockets",
    )

    def __init__(self, *, max_connections: int, max_user_connections: int, max_handshakes: int = 500) -> None:
        self.max_connections = max_connections
        self.max_user_connections = max_user_connections
        self.max_handshakes = max_handshakes
        self.handshakes = 0  # sockets not yet past their connect
        self.sockets = 0  # open now
        self.accepted = 0  # ever accepted (for /metrics)
        self.refused: Counter[str] = Counter()  # "node" / "user" refusals (for /metrics)
        self._users: Counter[str] = Counter()

    def open_socket(self) -> bool:
        """Count one more socket; False (nothing counted) when the node is full."""
        if self.sockets >= self.max_connections:
            self.refused["node"] += 1
            return False
        self.sockets += 1
        self.accepted += 1
        return True

    def begin_handshake(self) -> bool:
        """Count one more socket on its way to a connect; False (nothing counted) when too many are."""
        if self.handshakes >= self.max_handshakes:
            self.refused["handshakes"] += 1
            return False
        self.handshakes += 1
        return True

    def end_handshake(self) -> None:
        """The socket's connect is answered (or the socket is gone)."""
        assert self.handshakes > 0, "end_handshake without begin_handshake"
        self.handshakes -= 1

    def close_socket(self) -> None:
        assert self.sockets > 0, "close_socket without open_socket"
        self.sockets -= 1

    def add_user(self, user: str) -> bool:
        """Count one more session of ``user``; False (nothing counted) when the user has too many here."""
        if self._users[user] >= self.max_user_connections:
            self.refused["user"] += 1
            return False
        self._users[user] += 1
        return True

    def remove_user(self, user: str) -> None:
        count = self._users[user] - 1
        if count > 0:
            self._users[user] = count
        else:
            del self._users[user]  # a node sees many users over its life: forget the ones gone

    def user_connections(self, user: str) -> int:
        return self._users.get(user, 0)

    @property
    def users(self) -> int:
        """Distinct users with a session on this node."""
        return len(self._users)
